//! One event ring per CPU: a socket whose events are made on two CPUs
//! reaches the tracker in the kernel's order, through the live CLI's
//! reading thread and through the library's own drain alike.
//!
//! On loopback a segment is processed on the CPU that sends it, so with the
//! client pinned to CPU 0 and the server to CPU 1, each socket's transitions
//! alternate between the two CPUs' rings: the client's SYN_SENT and
//! ESTABLISHED on CPU 0, its CLOSE_WAIT on CPU 1 (the server's FIN), its
//! LAST_ACK and CLOSE on CPU 0 again. Read ring by ring, the CLOSE_WAIT
//! would come after the CLOSE.

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use tcptrace::loader::TraceOptions;
use tcptrace_tests::{State as S, Trace, json_run::traced, paths::path};

/// The two tests pin threads to the same CPUs: one at a time.
static CPUS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    CPUS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connections per test: enough that a merge by ring, not by time, would
/// break several of them.
const CONNECTIONS: usize = 50;

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it (cpu < 2).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `CONNECTIONS` connections to `listener`: the server (on CPU 1) accepts
/// and closes first; the client (on CPU 0) reads the end and closes.
/// Returns the client ports.
fn server_closes_first_across_cpus(listener: &TcpListener) -> Vec<u16> {
    let addr = listener.local_addr().unwrap();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            pin_to(1);
            for _ in 0..CONNECTIONS {
                let (stream, _) = listener.accept().unwrap();
                drop(stream);
            }
        });
        let client = scope.spawn(move || {
            pin_to(0);
            let mut ports = Vec::new();
            for _ in 0..CONNECTIONS {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                ports.push(stream.local_addr().unwrap().port());
                let mut rest = Vec::new();
                // EOF: the server's FIN has been processed here.
                stream.read_to_end(&mut rest).unwrap();
            }
            ports
        });
        server.join().unwrap();
        client.join().unwrap()
    })
}

/// The client's transitions, as the kernel makes them.
const CLIENT: [(S, S); 5] = [
    (S::Close, S::SynSent),
    (S::SynSent, S::Established),
    (S::Established, S::CloseWait),
    (S::CloseWait, S::LastAck),
    (S::LastAck, S::Close),
];

#[test]
fn the_live_reader_merges_the_cpus_rings_back_into_the_kernels_order() {
    assert!(cpus() >= 2, "this test needs two CPUs, one ring each");
    let _turn = take_turn();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut ports = Vec::new();
    let (lines, summary) = traced(&["--port", &port.to_string()], || {
        ports = server_closes_first_across_cpus(&listener);
    });
    let expected: Vec<(String, String)> = CLIENT
        .iter()
        .map(|(old, new)| (old.to_string(), new.to_string()))
        .collect();
    for client in &ports {
        let local = format!("127.0.0.1:{client}");
        let life = lines
            .iter()
            .map(|l| &l["socket"])
            .find(|l| l["local"] == local.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "no life for the client {local} in {} lines, e.g. {}",
                    lines.len(),
                    lines[0]
                )
            });
        let steps: Vec<(String, String)> = life["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["old"].as_str().unwrap().into(),
                    s["new"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(steps, expected, "the client {local}, whole: {life}");
        assert_eq!(life["gap"], false, "{life}");
    }
    assert_eq!(summary["lost"], 0, "{summary}");
}

#[test]
fn the_librarys_drain_merges_the_cpus_rings_back_into_the_kernels_order() {
    assert!(cpus() >= 2, "this test needs two CPUs, one ring each");
    let _turn = take_turn();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut trace = Trace::start_with(TraceOptions::default(), &[port]);
    for client in server_closes_first_across_cpus(&listener) {
        let (life, _) = trace.wait_life(client, port);
        assert_eq!(path(&life), CLIENT, "the client :{client}: {life:#?}");
    }
    let counters = trace.stop();
    assert_eq!(counters.lost, 0, "{counters:?}");
    assert!(counters.balanced(), "{counters:?}");
}
