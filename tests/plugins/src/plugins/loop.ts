// Never returns (only a host timeout can stop it).
let spins: u64 = 0;

export function process_request_headers(): i32 {
  while (true) {
    // A store to a global keeps the optimizer from treating the loop as empty.
    spins = spins + 1;
  }
  return 0;
}
