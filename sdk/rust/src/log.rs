//! Lines in the server's log (logger `extproc.plugin`), tagged with the plugin's configured name.

use crate::sys;

pub fn debug(message: &str) {
    sys::log(0, message)
}

pub fn info(message: &str) {
    sys::log(1, message)
}

pub fn warn(message: &str) {
    sys::log(2, message)
}

pub fn error(message: &str) {
    sys::log(3, message)
}
