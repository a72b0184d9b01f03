//! An empty library target: it exists so that `tcptrace` can name this crate
//! as a build-dependency (cargo ignores a build-dependency without a library).
//! That edge is what makes cargo re-run tcptrace's build.rs, and so rebuild
//! the kernel object, when this crate's or tcptrace-common's code changes.
#![no_std]
