//! tcptrace: per-socket TCP handshakes, closes and resets, from eBPF.
//!
//! The data flows one way:
//! kernel event → [`decode`] → [`tracker`] → [`classify`] → [`render`],
//! with [`summary`] counting what the classifier found. The stages hand each
//! other the plain data of [`model`]; only [`render`] puts it into words.
//! [`kernel`] holds everything that depends on the running kernel's version,
//! [`loader`] loads and attaches the kernel program, and [`session`] wires the
//! pipeline together for the CLI and for tests.

pub mod cgroups;
pub mod classify;
pub mod cli;
pub mod command;
pub mod counters;
pub mod decode;
pub mod errors;
pub mod filter;
pub mod host;
pub mod input;
pub mod kernel;
pub mod kernel_log;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod mounts;
pub mod output;
pub mod owners;
pub mod pipeline;
pub mod procs;
pub mod recording;
pub mod render;
pub mod replay;
pub mod sampler;
pub mod session;
pub mod snapshot;
pub mod sockdiag;
pub mod summary;
pub mod tracker;
