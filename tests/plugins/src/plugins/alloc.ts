// Allocates 1 MiB blocks forever and keeps them alive; the call fails once the
// host's memory limit (e.g. manifest `memory.max_pages`) or the 4 GiB wasm32
// limit is reached.
const hoard: Uint8Array[] = [];

export function process_request_headers(): i32 {
  while (true) {
    const block = new Uint8Array(1 << 20);
    block[0] = <u8>hoard.length;
    hoard.push(block);
  }
  return 0;
}
