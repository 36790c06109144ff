// The Extism kernel ("extism:host/env") and the extproc host functions ("extism:host/user"),
// declared by hand so the SDK needs no crate. Built for any other target (`cargo test` on the
// build machine) the same functions run against the in-process host in `testing`.

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "extism:host/env")]
    extern "C" {
        pub fn input_offset() -> u64;
        pub fn input_length() -> u64;
        pub fn input_load_u8(offset: u64) -> u8;
        pub fn input_load_u64(offset: u64) -> u64;
        pub fn length(offset: u64) -> u64;
        pub fn alloc(length: u64) -> u64;
        pub fn free(offset: u64);
        pub fn output_set(offset: u64, length: u64);
        pub fn error_set(offset: u64);
        pub fn config_get(offset: u64) -> u64;
        pub fn store_u8(offset: u64, value: u8);
        pub fn load_u8(offset: u64) -> u8;
        pub fn store_u64(offset: u64, value: u64);
        pub fn load_u64(offset: u64) -> u64;
    }

    #[link(wasm_import_module = "extism:host/user")]
    extern "C" {
        pub fn extproc_kv_get(key: u64) -> u64;
        pub fn extproc_kv_set(key: u64, value: u64, ttl_ms: i64) -> i32;
        pub fn extproc_kv_delete(key: u64) -> i32;
        pub fn extproc_kv_incr(key: u64, delta: i64, ttl_ms: i64) -> i64;
        pub fn extproc_kv_cas(key: u64, expected: u64, value: u64, ttl_ms: i64) -> i32;
        pub fn extproc_now_ms() -> i64;
        pub fn extproc_log(level: i32, message: u64);
        // Not Extism's own http_request, which the server refuses for every host.
        pub fn extproc_http_request(request: u64) -> u64;
    }
}

#[cfg(target_arch = "wasm32")]
mod host {
    use super::imports::*;
    use crate::json::Sink;

    /// Copies `bytes` to Extism memory at `at`, in 8-byte words to keep host calls few.
    fn copy_to_extism(mut at: u64, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        // Safety: the callers write only inside blocks they allocated at least that long.
        unsafe {
            for word in &mut words {
                let mut w = [0u8; 8];
                w.copy_from_slice(word);
                store_u64(at, u64::from_le_bytes(w));
                at += 8;
            }
            for &b in words.remainder() {
                store_u8(at, b);
                at += 1;
            }
        }
    }

    /// An Extism memory block holding a copy of `bytes`; freed on drop.
    pub struct Block(pub u64);

    impl Block {
        pub fn new(bytes: &[u8]) -> Block {
            let offset = unsafe { alloc(bytes.len() as u64) };
            copy_to_extism(offset, bytes);
            Block(offset)
        }
    }

    impl Drop for Block {
        fn drop(&mut self) {
            unsafe { free(self.0) }
        }
    }

    /// The bytes of the block at `offset` (which the caller then owns and frees).
    fn read_block(offset: u64) -> Vec<u8> {
        unsafe {
            let n = length(offset) as usize;
            let mut out = vec![0u8; n];
            let mut words = out.chunks_exact_mut(8);
            let mut at = offset;
            for word in &mut words {
                word.copy_from_slice(&load_u64(at).to_le_bytes());
                at += 8;
            }
            for b in words.into_remainder() {
                *b = load_u8(at);
                at += 1;
            }
            out
        }
    }

    /// The block a host function returned, or None for offset 0.
    fn take_block(offset: u64) -> Option<Vec<u8>> {
        if offset == 0 {
            return None;
        }
        let bytes = read_block(offset);
        drop(Block(offset));
        Some(bytes)
    }

    pub fn input() -> Vec<u8> {
        unsafe {
            let n = input_length() as usize;
            let mut out = vec![0u8; n];
            let mut words = out.chunks_exact_mut(8);
            let mut at = 0u64;
            for word in &mut words {
                word.copy_from_slice(&input_load_u64(at).to_le_bytes());
                at += 8;
            }
            for b in words.into_remainder() {
                *b = input_load_u8(at);
                at += 1;
            }
            out
        }
    }

    /// The input, and Extism's copy of it freed: the call's output can then take its place instead
    /// of growing Extism's memory by its size again. `input()` finds nothing afterwards.
    pub fn take_input() -> Vec<u8> {
        let bytes = input();
        unsafe { free(input_offset()) }
        bytes
    }

    /// Writes the call's output straight into one Extism block of the length announced, so the
    /// output (a whole body, perhaps) needs no copy in the plugin's memory.
    pub struct OutputWriter {
        offset: u64,
        at: u64,
        staged: [u8; 1024],
        n: usize,
    }

    impl OutputWriter {
        pub fn new(len: usize) -> OutputWriter {
            let offset = unsafe { alloc(len as u64) };
            OutputWriter { offset, at: offset, staged: [0; 1024], n: 0 }
        }

        fn flush(&mut self) {
            copy_to_extism(self.at, &self.staged[..self.n]);
            self.at += self.n as u64;
            self.n = 0;
        }

        /// Makes what was written the call's output (the host then owns the block).
        pub fn finish(mut self) {
            self.flush();
            unsafe { output_set(self.offset, self.at - self.offset) }
        }
    }

    impl Sink for OutputWriter {
        fn put(&mut self, bytes: &[u8]) {
            // Small pieces (punctuation, escapes) are gathered; long runs of a body go straight on.
            if self.n + bytes.len() > self.staged.len() {
                self.flush();
            }
            if bytes.len() >= self.staged.len() {
                copy_to_extism(self.at, bytes);
                self.at += bytes.len() as u64;
            } else {
                self.staged[self.n..self.n + bytes.len()].copy_from_slice(bytes);
                self.n += bytes.len();
            }
        }
    }

    pub fn output(bytes: &[u8]) {
        let mut w = OutputWriter::new(bytes.len());
        w.put(bytes);
        w.finish();
    }

    pub fn set_error(message: &str) {
        let block = std::mem::ManuallyDrop::new(Block::new(message.as_bytes()));
        unsafe { error_set(block.0) }
    }

    pub fn config(key: &str) -> Option<Vec<u8>> {
        let k = Block::new(key.as_bytes());
        // Extism owns config values: read, never free.
        let offset = unsafe { config_get(k.0) };
        if offset == 0 {
            None
        } else {
            Some(read_block(offset))
        }
    }

    pub fn kv_get(key: &[u8]) -> Option<Vec<u8>> {
        let k = Block::new(key);
        take_block(unsafe { extproc_kv_get(k.0) })
    }

    pub fn kv_set(key: &[u8], value: &[u8], ttl_ms: i64) -> bool {
        let (k, v) = (Block::new(key), Block::new(value));
        unsafe { extproc_kv_set(k.0, v.0, ttl_ms) != 0 }
    }

    pub fn kv_delete(key: &[u8]) -> bool {
        let k = Block::new(key);
        unsafe { extproc_kv_delete(k.0) != 0 }
    }

    pub fn kv_incr(key: &[u8], delta: i64, ttl_ms: i64) -> i64 {
        let k = Block::new(key);
        unsafe { extproc_kv_incr(k.0, delta, ttl_ms) }
    }

    pub fn kv_cas(key: &[u8], expected: Option<&[u8]>, value: &[u8], ttl_ms: i64) -> bool {
        let k = Block::new(key);
        let e = expected.map(Block::new);
        let v = Block::new(value);
        unsafe { extproc_kv_cas(k.0, e.as_ref().map_or(0, |b| b.0), v.0, ttl_ms) != 0 }
    }

    pub fn now_ms() -> i64 {
        unsafe { extproc_now_ms() }
    }

    pub fn log(level: i32, message: &str) {
        let m = Block::new(message.as_bytes());
        unsafe { extproc_log(level, m.0) }
    }

    pub fn http_request(request: &[u8]) -> Option<Vec<u8>> {
        let r = Block::new(request);
        take_block(unsafe { extproc_http_request(r.0) })
    }
}

#[cfg(target_arch = "wasm32")]
pub use host::*;

#[cfg(not(target_arch = "wasm32"))]
pub use crate::testing::host::*;
