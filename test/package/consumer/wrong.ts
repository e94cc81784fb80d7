// Must NOT type-check: proves the consumer's check reads the package's types (a missing or `any`
// typing would accept these).
import { allocDmaBuffer, openDevice } from 'vfio-bind';

openDevice(42);
allocDmaBuffer('4096');
