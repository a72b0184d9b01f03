//! Production owners: services started before tcptrace, and listeners that
//! share a port in different network namespaces. Each test runs the real
//! CLI against real processes and reads its JSON.

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tcptrace_tests::{
    DEADLINE,
    bpf_objects::{Held, Kind, held_by, u64_keys_of},
    json_run::{KillOnDrop, port_of, traced},
    netns::Netns,
    tcptrace_binary,
};

/// A Python server named `name` (PR_SET_NAME), listening on `port` (0: any),
/// that accepts connections and closes each when its client does. Prints
/// its port.
fn named_server(prefix: &[&str], name: &str, port: u16) -> (KillOnDrop, u16) {
    let script = format!(
        "import ctypes, socket, threading\n\
         ctypes.CDLL(None).prctl(15, b'{name}', 0, 0, 0)\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('127.0.0.1', {port})); l.listen(64)\n\
         print(l.getsockname()[1], flush=True)\n\
         def serve(c):\n\
         \x20   while c.recv(4096): pass\n\
         \x20   c.close()\n\
         while True:\n\
         \x20   c, _ = l.accept()\n\
         \x20   threading.Thread(target=serve, args=(c,), daemon=True).start()\n"
    );
    let (program, pre) = match prefix.split_first() {
        Some((p, rest)) => (*p, rest.to_vec()),
        None => ("python3", vec![]),
    };
    let mut cmd = Command::new(program);
    cmd.args(&pre);
    if !prefix.is_empty() {
        cmd.arg("python3");
    }
    let mut child = cmd
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the server's port");
    (KillOnDrop(child), port)
}

fn netns_of(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn a_server_started_before_tcptrace_owns_its_sockets_from_the_first_event() {
    let (server, port) = named_server(&[], "tt-old-server", 0);
    let pid = u64::from(server.0.id());
    // A connection made before tcptrace starts, kept open.
    let early = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let args = ["--snapshot", "--view", "both", "--comm", "tt-old-server"];
    let (lines, summary) = traced(&args, || {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(c);
        std::thread::sleep(Duration::from_millis(100));
    });
    drop(early);

    // --snapshot listed the listener and the early connection, with the pid.
    let snap: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "snapshot").collect();
    let held_by_server = |state: &str| {
        snap.iter().any(|s| {
            s["state"] == state
                && port_of(&s["local"]) == port
                && s["holders"][0]["pid"].as_u64() == Some(pid)
        })
    };
    assert!(held_by_server("LISTEN"), "snapshot: {snap:#?}");
    assert!(held_by_server("ESTABLISHED"), "snapshot: {snap:#?}");

    // The new connection's server side: all five transitions kept by the
    // --comm filter (three run in softirq), each with the server as owner.
    let server_steps: Vec<(String, String)> = lines
        .iter()
        .filter(|l| {
            l["type"] == "transition"
                && port_of(&l["local"]) == port
                && l["owner"]["pid"].as_u64() == Some(pid)
        })
        .map(|l| {
            (
                l["old"].as_str().unwrap().to_owned(),
                l["new"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for step in [
        ("LISTEN", "SYN_RECV"),
        ("SYN_RECV", "ESTABLISHED"),
        ("ESTABLISHED", "CLOSE_WAIT"),
        ("CLOSE_WAIT", "LAST_ACK"),
        ("LAST_ACK", "CLOSE"),
    ] {
        assert!(
            server_steps.contains(&(step.0.into(), step.1.into())),
            "missing {step:?} owned by the server; got {server_steps:?}; summary {summary}"
        );
    }
    // Its ladder names the owner too.
    assert!(
        lines.iter().any(|l| l["type"] == "socket"
            && port_of(&l["socket"]["local"]) == port
            && l["socket"]["owner"]["comm"] == "tt-old-server"),
        "no server-side ladder owned by tt-old-server"
    );
    drop(server);
}

#[test]
fn two_containers_on_one_port_each_own_their_children_and_netns_filters_one() {
    let (a, b) = (Netns::new("own-a"), Netns::new("own-b"));
    let (path_a, path_b) = (
        format!("/run/netns/{}", a.name),
        format!("/run/netns/{}", b.name),
    );
    let (ino_a, ino_b) = (netns_of(&path_a), netns_of(&path_b));
    const PORT: u16 = 8080;
    let connect_in = |ns: &Netns| {
        ns.enter(|| {
            let c = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            drop(c);
        });
    };

    let mut servers = Vec::new();
    let (lines, _) = traced(&["--port", "8080"], || {
        // Started under tcptrace: their listen() is seen with its netns.
        servers.push(named_server(&["ip", "netns", "exec", &a.name], "tt-ns-a", PORT).0);
        servers.push(named_server(&["ip", "netns", "exec", &b.name], "tt-ns-b", PORT).0);
        connect_in(&a);
        connect_in(&b);
    });
    let children: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["type"] == "socket" && l["socket"]["role"] == "server")
        .map(|l| &l["socket"])
        .collect();
    for (ino, name) in [(ino_a, "tt-ns-a"), (ino_b, "tt-ns-b")] {
        assert!(
            children
                .iter()
                .any(|c| c["netns"].as_u64() == Some(ino) && c["owner"]["comm"] == name),
            "no child in netns {ino} owned by {name}: {children:#?}"
        );
    }
    assert!(
        !children.iter().any(|c| (c["netns"].as_u64() == Some(ino_a)
            && c["owner"]["comm"] == "tt-ns-b")
            || (c["netns"].as_u64() == Some(ino_b) && c["owner"]["comm"] == "tt-ns-a")),
        "a child was given the other namespace's listener: {children:#?}"
    );
    drop(servers);

    // --netns keeps one namespace, in the kernel.
    let mut servers = Vec::new();
    let (lines, summary) = traced(&["--port", "8080", "--netns", &path_a], || {
        servers.push(named_server(&["ip", "netns", "exec", &a.name], "tt-ns-a", PORT).0);
        servers.push(named_server(&["ip", "netns", "exec", &b.name], "tt-ns-b", PORT).0);
        connect_in(&a);
        connect_in(&b);
    });
    let sockets: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["type"] == "socket")
        .map(|l| &l["socket"])
        .collect();
    assert!(!sockets.is_empty(), "nothing kept; summary {summary}");
    assert!(
        sockets
            .iter()
            .all(|s| s["netns"].as_u64().is_none_or(|n| n == ino_a)),
        "a socket of another namespace passed --netns: {sockets:#?}"
    );
    assert!(summary["filtered"].as_u64().unwrap() > 0, "{summary}");
    drop(servers);
}

/// A parent that, when told, forks a child which connects to `port`, says
/// the child's pid and the connection's local port, and closes it.
fn forking_parent() -> (
    Child,
    std::process::ChildStdin,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let script = "import os, socket, sys\n\
        for line in sys.stdin:\n\
        \x20   port = int(line)\n\
        \x20   r, w = os.pipe()\n\
        \x20   pid = os.fork()\n\
        \x20   if pid == 0:\n\
        \x20       c = socket.create_connection(('127.0.0.1', port))\n\
        \x20       os.write(w, str(c.getsockname()[1]).encode())\n\
        \x20       c.close(); os._exit(0)\n\
        \x20   os.waitpid(pid, 0)\n\
        \x20   print(pid, os.read(r, 16).decode(), flush=True)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, stdin, lines)
}

#[test]
fn follow_keeps_the_sockets_of_processes_forked_while_tracing() {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((s, _)) = listener.accept() {
                let mut s = s;
                let _ = s.read(&mut [0u8; 16]);
            }
        }
    });
    for follow in [true, false] {
        let (mut parent, mut stdin, mut lines) = forking_parent();
        let pid = parent.id().to_string();
        let mut args = vec!["--pid", pid.as_str(), "--view", "stream"];
        if follow {
            args.push("--follow");
        }
        let mut child_port = 0u16;
        let (out, _) = traced(&args, || {
            writeln!(stdin, "{port}").unwrap();
            let line = lines.next().unwrap().unwrap();
            child_port = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        });
        let _ = parent.kill();
        let _ = parent.wait();
        let seen = out
            .iter()
            .any(|l| l["type"] == "transition" && port_of(&l["local"]) == child_port);
        assert_eq!(
            seen, follow,
            "the forked child's connection (local port {child_port}) with --follow={follow}"
        );
    }
    acceptor.join().unwrap();
}

/// Cgroup directories of the test's own under the cgroup2 root, removed
/// (innermost first) on drop.
struct Cgroups(Vec<std::path::PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn a_systemd_unit_and_a_container_are_named_from_the_owners_cgroup() {
    let root = tcptrace::cli::cgroup2_root().expect("a cgroup v2 mount");
    let slice = root.join(format!("tt-owners-{}.slice", std::process::id()));
    let id = "3f2a1b9c0d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
    let unit = slice.join("tt-web.service");
    let container = slice.join(format!("docker-{id}.scope"));
    for dir in [&slice, &unit, &container] {
        std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    let _cleanup = Cgroups(vec![slice.clone(), unit.clone(), container.clone()]);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.read(&mut [0u8; 16]);
            }
        }
    });
    // A client that moves itself into `cgroup`, connects, says its port.
    let client_in = |cgroup: &std::path::Path| -> u16 {
        let script = format!(
            "import os, socket\n\
             open('{}/cgroup.procs', 'w').write(str(os.getpid()))\n\
             c = socket.create_connection(('127.0.0.1', {port}))\n\
             print(c.getsockname()[1], flush=True)\n\
             c.close()\n",
            cgroup.display()
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let (mut web_port, mut box_port) = (0, 0);
    let (lines, _) = traced(&["--port", &port.to_string()], || {
        web_port = client_in(&unit);
        box_port = client_in(&container);
    });
    acceptor.join().unwrap();
    let workload_of = |local: u16| {
        lines
            .iter()
            .find(|l| l["type"] == "socket" && port_of(&l["socket"]["local"]) == local)
            .map(|l| l["socket"]["workload"].clone())
            .unwrap_or_else(|| panic!("no ladder for :{local}"))
    };
    assert_eq!(workload_of(web_port)["unit"], "tt-web.service");
    assert_eq!(workload_of(box_port)["container"], id);
    assert_eq!(workload_of(box_port)["unit"], serde_json::Value::Null);
}

#[test]
fn a_command_run_under_tcptrace_shows_only_its_sockets_and_exits_with_its_status() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let acceptor = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.read(&mut [0u8; 16]);
        }
    });
    let script = format!(
        "import os, socket, sys\n\
         print(os.getpid(), flush=True)\n\
         c = socket.create_connection(('127.0.0.1', {port})); c.close()\n\
         try: socket.create_connection(('127.0.0.1', {refused}))\n\
         except ConnectionRefusedError: pass\n\
         sys.exit(3)\n"
    );
    let out = Command::new(tcptrace_binary())
        .args(["--json", "--", "python3", "-c", &script])
        .output()
        .unwrap();
    acceptor.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "the command's status: {stderr}");
    // The command's stdout is its own; tcptrace's report is on stderr.
    let pid: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let sockets: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v: &serde_json::Value| v["type"] == "socket")
        .collect();
    let remote_ports: Vec<u16> = sockets
        .iter()
        .map(|s| port_of(&s["socket"]["remote"]))
        .collect();
    assert!(remote_ports.contains(&port), "{sockets:#?}");
    assert!(remote_ports.contains(&refused), "{sockets:#?}");
    for s in &sockets {
        assert_eq!(
            s["socket"]["owner"]["pid"].as_u64(),
            Some(pid),
            "not the command's: {s}"
        );
    }
    // The accepting side belongs to the test, not the command: not shown.
    assert!(
        !sockets
            .iter()
            .any(|s| port_of(&s["socket"]["local"]) == port),
        "{sockets:#?}"
    );
    // A command that does not exist: a clear error before anything loads.
    let out = Command::new(tcptrace_binary())
        .args(["--", "no-such-command-tt"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no-such-command-tt: command not found"),
        "{stderr}"
    );
    assert!(!stderr.contains("tracing TCP"), "{stderr}");
}

/// Debian's nginx (installed by `cargo xtask setup`) as master + 2
/// workers, listening on a loopback port and proxying to `backend`; its
/// files live in a directory of the test's own. Stopped on drop.
struct Nginx {
    master: KillOnDrop,
    port: u16,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(backend: u16) -> Nginx {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("tt-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = format!(
            "worker_processes 2;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://127.0.0.1:{backend}; }} }}\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let master = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .spawn()
            .unwrap_or_else(|e| panic!("starting nginx ({e}): run `cargo xtask setup`"));
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            master: KillOnDrop(master),
            port,
            dir,
        }
    }

    /// One HTTP request, answered (through the backend).
    fn get(&self) {
        use std::io::Write;
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child (QUIT: graceful stop).
        unsafe { libc::kill(self.master.0.id() as i32, libc::SIGQUIT) };
        // The master stops its workers before it exits. Killed at once (by
        // KillOnDrop), it left them running as orphans, holding the test
        // harness's output pipe (seen: workers an hour old, and a
        // `cargo test | grep` that never ended). Bounded: KillOnDrop ends
        // a master that takes longer.
        let start = Instant::now();
        while matches!(self.master.0.try_wait(), Ok(None)) && start.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Answers every request with "ok", on a thread, for `n` requests.
fn http_backend(n: usize) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.read(&mut [0u8; 1024]);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
        }
    });
    (port, handle)
}

#[test]
fn nginx_started_before_tcptrace_master_pid_keeps_its_connections_and_follow_its_workers() {
    let (backend, served) = http_backend(4);
    let nginx = Nginx::start(backend);
    let master = u64::from(nginx.master.0.id());
    let master_arg = master.to_string();
    for follow in [false, true] {
        let mut args = vec!["--pid", master_arg.as_str(), "--view", "stream"];
        if follow {
            args.push("--follow");
        }
        let (lines, summary) = traced(&args, || {
            nginx.get();
            nginx.get();
        });
        let transitions: Vec<&serde_json::Value> =
            lines.iter().filter(|l| l["type"] == "transition").collect();
        // The accepted connections, kept with or without --follow, softirq
        // transitions included: the master's (it listened) until a worker
        // accepts them; then the worker's when --follow keeps workers, and
        // still the master's without it (a kept life stays whole).
        let accepted: Vec<&&serde_json::Value> = transitions
            .iter()
            .filter(|t| port_of(&t["local"]) == nginx.port)
            .collect();
        assert!(
            accepted
                .iter()
                .any(|t| t["old"] == "LISTEN" && t["new"] == "SYN_RECV"),
            "follow={follow}: {accepted:#?} {summary}"
        );
        let acceptors: std::collections::HashMap<&str, u64> = lines
            .iter()
            .filter(|l| l["event"] == "accept" && port_of(&l["local"]) == nginx.port)
            .map(|l| {
                (
                    l["skaddr_hex"].as_str().unwrap(),
                    l["context"]["tgid"].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(
            !acceptors.is_empty() && acceptors.values().all(|&pid| pid != master),
            "follow={follow}: a worker accepted each: {acceptors:?}"
        );
        // In stream order, each transition against the latest accept of
        // its socket address (freed sockets' addresses are reused).
        let mut acceptor_now: std::collections::HashMap<&str, u64> = Default::default();
        let mut wrong = Vec::new();
        for l in &lines {
            let Some(sk) = l["skaddr_hex"].as_str() else {
                continue;
            };
            if l["event"] == "accept" && port_of(&l["local"]) == nginx.port {
                acceptor_now.insert(sk, l["context"]["tgid"].as_u64().unwrap());
            } else if l["type"] == "transition" && port_of(&l["local"]) == nginx.port {
                let owner = l["owner"]["tgid"].as_u64();
                let right =
                    owner == Some(master) || (follow && owner == acceptor_now.get(sk).copied());
                if !right {
                    wrong.push(l);
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "follow={follow}: owned by neither: {wrong:#?}"
        );
        // A worker's own connection to the backend: a worker's socket, kept
        // only when --follow takes the master's children in.
        let upstream = transitions.iter().any(|t| port_of(&t["remote"]) == backend);
        assert_eq!(
            upstream, follow,
            "worker-to-backend connection, follow={follow}"
        );
    }
    drop(nginx);
    served.join().unwrap();
}

/// This test's own tcptrace: the child started with `--comm <name>`.
fn tracer_with_comm_filter(name: &str) -> u32 {
    let me = std::process::id();
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(") ")
                .next()
                .and_then(|rest| rest.split(' ').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(me)
                && args
                    .windows(2)
                    .any(|w| w == [&b"--comm"[..], name.as_bytes()])
            {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no tcptrace child with --comm {name}");
}

/// Under a process filter the kernel keeps each socket's owner (to judge
/// its events). A socket's entry goes at its destroy: a later socket at the
/// same address, first seen mid-life, must not inherit a dead one's owner.
#[test]
fn the_kernels_owner_map_forgets_each_socket_at_its_destroy() {
    const NAME: &str = "tt-owners-gone";
    const CONNECTIONS: usize = 20;
    let mut left = Vec::new();
    let mut port = 0;
    let (lines, summary) = traced(&["--comm", NAME], || {
        port = std::thread::Builder::new()
            .name(NAME.into())
            .spawn(|| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                for _ in 0..CONNECTIONS {
                    let client = TcpStream::connect(addr).unwrap();
                    let (mut server, _) = listener.accept().unwrap();
                    // The client closes first (TIME_WAIT), the server once
                    // it has read the FIN.
                    drop(client);
                    let _ = server.read(&mut [0u8; 1]);
                }
                addr.port()
            })
            .unwrap()
            .join()
            .unwrap();
        // The last server sockets' final ACK, and their destroys.
        std::thread::sleep(Duration::from_millis(300));
        let tracer = tracer_with_comm_filter(NAME);
        let maps: Vec<Held> = held_by(tracer, Kind::Map)
            .into_iter()
            .filter(|m| m.name == "OWNERS")
            .collect();
        assert_eq!(maps.len(), 1, "tcptrace {tracer}'s OWNERS maps: {maps:?}");
        left = u64_keys_of(maps[0].id);
    });

    // Every socket of the test: the listener, and both ends of each
    // connection, each destroyed before the map was read.
    let mut sockets: Vec<u64> = lines
        .iter()
        .filter(|l| {
            l["type"] == "socket"
                && (port_of(&l["socket"]["local"]) == port
                    || port_of(&l["socket"]["remote"]) == port)
        })
        .filter_map(|l| {
            let hex = l["socket"]["skaddr"].as_str()?;
            u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok()
        })
        .collect();
    let lives = sockets.len();
    // Addresses come back: a freed socket's is often the next one's.
    sockets.sort_unstable();
    sockets.dedup();
    assert!(
        lives > 2 * CONNECTIONS,
        "expected the listener and {} connection ends on port {port}, got {}; summary {summary}",
        2 * CONNECTIONS,
        lives
    );
    let remembered: Vec<String> = sockets
        .iter()
        .filter(|sk| left.contains(sk))
        .map(|sk| format!("{sk:#x}"))
        .collect();
    assert!(
        remembered.is_empty(),
        "the kernel still holds owners at {} addresses of destroyed sockets: {remembered:?}",
        remembered.len()
    );
}
