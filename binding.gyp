{
  "targets": [
    {
      "target_name": "vfio_addon",
      "sources": ["native/vfio_addon.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
