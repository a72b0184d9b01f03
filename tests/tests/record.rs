//! Record and replay: what the live run printed, a replay of its recording
//! prints again — as `nobody`, without BPF — for the paths people keep
//! evidence of (graceful, refused, SO_LINGER 0, unread data, a killed
//! process), for a rotated set given in any order, and up to the damage in
//! a file cut short.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use tcptrace_tests::{Cli, as_nobody, linger_zero, tcptrace_binary};

/// A directory of the test's own, readable by `nobody`, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tcptrace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Records with `args` while `scenario` runs; returns the live JSON lines.
fn record_live(args: &[&str], scenario: impl FnOnce()) -> Vec<String> {
    let out = tempfile_in_memory();
    let cli = Cli::start(args, Stdio::from(out.try_clone().unwrap()));
    scenario();
    // Lives linger 200 ms for late events before they are reported.
    std::thread::sleep(Duration::from_millis(400));
    cli.signal(libc::SIGINT);
    let (code, summary, stderr) = cli.exit_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert_eq!(
        summary["recording"]["events_dropped"], 0,
        "events missing from the recording: {summary}"
    );
    read_back(out)
}

fn tempfile_in_memory() -> std::fs::File {
    // An anonymous file: the child writes, the test reads it back.
    let fd = unsafe { libc::memfd_create(c"tcptrace-live".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor we own.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

fn read_back(mut f: std::fs::File) -> Vec<String> {
    use std::io::Seek as _;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut text = String::new();
    f.read_to_string(&mut text).unwrap();
    text.lines().map(str::to_owned).collect()
}

/// `tcptrace --read FILES… --json` as nobody.
fn replay(files: &[PathBuf], extra: &[&str]) -> Output {
    let mut cmd = Command::new(tcptrace_binary());
    cmd.arg("--json").args(extra).arg("--read").args(files);
    as_nobody(&mut cmd);
    cmd.output().unwrap()
}

fn sockets(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.starts_with("{\"type\":\"socket\""))
        .collect()
}

/// The same socket lines in the same order; on failure, the first that
/// differs.
fn assert_same_sockets(live: &[String], replayed: &[String]) {
    let (a, b) = (sockets(live), sockets(replayed));
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        panic!(
            "replay differs from the live run at socket {i} of {} live, {} replayed:\nlive:   {:?}\nreplay: {:?}",
            a.len(),
            b.len(),
            a.get(i),
            b.get(i)
        );
    }
    assert!(!a.is_empty(), "the live run reported no socket");
}

/// (role, close kind) of each socket with `port` at either end.
fn kind_for_port(lines: &[String], port: u16) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "socket")
        .filter(|v| {
            let ends = [&v["socket"]["local"], &v["socket"]["remote"]];
            ends.iter()
                .any(|e| e.as_str().is_some_and(|s| s.ends_with(&format!(":{port}"))))
        })
        .map(|v| {
            (
                v["socket"]["role"].as_str().unwrap_or("?").to_owned(),
                v["verdict"]["close"]["kind"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            )
        })
        .collect()
}

/// The five paths, each on a port of its own; returns those ports.
fn five_paths() -> [u16; 5] {
    let listen = || TcpListener::bind("127.0.0.1:0").unwrap();
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    // Graceful: the client closes first, the server follows.
    let graceful = listen();
    let c = TcpStream::connect(graceful.local_addr().unwrap()).unwrap();
    let (s, _) = graceful.accept().unwrap();
    drop(c);
    let mut buf = [0u8; 1];
    let _ = (&s).read(&mut buf);
    drop(s);
    // Refused: nobody listens there any more.
    let gone = listen();
    let refused_port = port(&gone);
    drop(gone);
    assert!(TcpStream::connect(("127.0.0.1", refused_port)).is_err());
    // SO_LINGER 0: the server aborts with an RST.
    let linger = listen();
    let c2 = TcpStream::connect(linger.local_addr().unwrap()).unwrap();
    let (s2, _) = linger.accept().unwrap();
    linger_zero(&s2);
    drop(s2);
    let _ = (&c2).read(&mut buf);
    drop(c2);
    // Unread data: the server closes without reading what came.
    let unread = listen();
    let mut c3 = TcpStream::connect(unread.local_addr().unwrap()).unwrap();
    let (s3, _) = unread.accept().unwrap();
    c3.write_all(b"never read").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(s3);
    let _ = (&c3).read(&mut buf);
    drop(c3);
    // A killed process: a child connected to us, SIGKILLed.
    let victim = listen();
    let addr = victim.local_addr().unwrap();
    let mut child = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,time\ns=socket.create_connection(('127.0.0.1',{}))\nprint('up',flush=True)\ntime.sleep(30)",
                addr.port()
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (s4, _) = victim.accept().unwrap();
    let mut up = [0u8; 3];
    child.stdout.take().unwrap().read_exact(&mut up).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = (&s4).read(&mut buf);
    let _ = s4.shutdown(Shutdown::Both);
    drop(s4);
    [
        port(&graceful),
        refused_port,
        port(&linger),
        port(&unread),
        addr.port(),
    ]
}

#[test]
fn a_replay_as_nobody_prints_what_the_live_run_printed_for_every_path() {
    let dir = Scratch::new("record");
    let file = dir.path("paths.rec");
    let mut ports = [0u16; 5];
    let live = record_live(&["--json", "--write", file.to_str().unwrap()], || {
        ports = five_paths()
    });
    let out = replay(std::slice::from_ref(&file), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    assert!(stderr.contains("reading a recording of"), "{stderr}");
    let replayed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_same_sockets(&live, &replayed);
    // And the paths are there, told as they happened.
    let expect = [
        (ports[0], "active"),
        (ports[1], "refused"),
        (ports[2], "reset_sent"),
        (ports[3], "reset_sent"),
        (ports[4], "active"),
    ];
    for (port, kind) in expect {
        let seen = kind_for_port(&replayed, port);
        assert!(
            seen.iter().any(|(_, k)| k == kind),
            "port {port}: expected a close of kind {kind}; seen {seen:?}"
        );
    }
    // Filters given at read time apply on top: only the refused port.
    let out = replay(
        std::slice::from_ref(&file),
        &["--port", &ports[1].to_string()],
    );
    let only: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!sockets(&only).is_empty());
    assert_eq!(
        sockets(&only).len(),
        kind_for_port(&only, ports[1]).len(),
        "sockets of other ports passed --port: {only:#?}"
    );
}

#[test]
fn a_file_cut_short_replays_up_to_the_damage_and_names_its_offset() {
    let dir = Scratch::new("cut");
    let file = dir.path("cut.rec");
    let live = record_live(&["--json", "--write", file.to_str().unwrap()], || {
        five_paths();
    });
    let bytes = std::fs::read(&file).unwrap();
    // Cut in the middle of a frame two thirds in. Frames vary in length
    // (host samples among them), so the cut can land on a boundary, which
    // is a whole file without its trailer: then one byte on is inside the
    // next frame (every frame has a 5-byte head).
    let damaged = dir.path("damaged.rec");
    let mut cut = bytes.len() * 2 / 3 + 3;
    std::fs::write(&damaged, &bytes[..cut]).unwrap();
    if replay(std::slice::from_ref(&damaged), &[]).status.success() {
        cut += 1;
        std::fs::write(&damaged, &bytes[..cut]).unwrap();
    }
    let out = replay(std::slice::from_ref(&damaged), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a damaged file must fail: {stderr}");
    assert!(
        stderr.contains("cut short at byte") && stderr.contains("damaged.rec"),
        "the fault is named with its file and offset: {stderr}"
    );
    // What was whole before the cut is shown.
    let shown = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(
        shown > 0,
        "nothing shown before the damage; live had {}",
        live.len()
    );
    // Not a recording at all: a clear error, no panic.
    let junk = dir.path("junk.rec");
    std::fs::write(&junk, b"hello, not a recording").unwrap();
    let out = replay(std::slice::from_ref(&junk), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a tcptrace recording"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_rotated_recording_replays_whole_from_its_files_in_any_order() {
    let dir = Scratch::new("rotate");
    let file = dir.path("churn.rec");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let live = record_live(
        &[
            "--json",
            "--port",
            &port,
            "--write",
            file.to_str().unwrap(),
            "--rotate-size",
            "1",
        ],
        || churn(&listener, 1500),
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files.len() >= 2,
        "1500 connections (~2 MB of records) in 1 MB files: {files:?}"
    );
    // The shell's order (churn.rec, churn.rec.1, churn.rec.10, …) or any
    // other: the headers say which comes first.
    files.sort();
    files.reverse();
    let out = replay(&files, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let replayed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_same_sockets(&live, &replayed);

    // --rotate-count keeps only the newest files; reading them says what
    // is missing.
    let kept = dir.path("kept.rec");
    record_live(
        &[
            "--json",
            "--port",
            &port,
            "--write",
            kept.to_str().unwrap(),
            "--rotate-size",
            "1",
            "--rotate-count",
            "1",
        ],
        || churn(&listener, 1500),
    );
    let left: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("kept.rec"))
        .collect();
    assert_eq!(left.len(), 1, "--rotate-count 1 left {left:?}");
    assert!(
        !left.contains(&kept),
        "the first file was rotated away: {left:?}"
    );
    let out = replay(&left, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("what came before it is not given"),
        "{stderr}"
    );
}

fn churn(listener: &TcpListener, count: usize) {
    let addr = listener.local_addr().unwrap();
    let server = listener.try_clone().unwrap();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..count {
            if server.accept().is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    for _ in 0..count {
        drop(TcpStream::connect(addr).unwrap());
        assert!(start.elapsed() < Duration::from_secs(30), "churn too slow");
    }
    acceptor.join().unwrap();
}
