//! The two ways tcptrace's programs read kernel memory: plain loads through
//! `bpf_rdonly_cast` where the kernel allows them (Linux 6.17+), and
//! `bpf_probe_read_kernel` calls elsewhere (`--no-direct-reads` takes that
//! path here). Each must be what the kernel runs, and both must report the
//! same sockets.

use std::{
    io::Write,
    net::{IpAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use serde_json::{Value, json};
use tcptrace_tests::{
    Cli,
    bpf_objects::{Kind, held_by},
    json_run::traced,
};

/// One test at a time: a process the other test starts is forked from
/// this one, and until it execs it holds this one's sockets. A socket
/// dropped meanwhile is closed for real by that child's exec, and
/// tcptrace rightly names the child as its closer (seen once).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Calls of `bpf_probe_read_kernel` in the state-change program the CLI
/// started with `args` runs, as the kernel shows its verified program.
fn probe_reads_in_the_state_program(args: &[&str]) -> usize {
    let cli = Cli::start(args, Stdio::null());
    let program = held_by(cli.child.id(), Kind::Program)
        .into_iter()
        .find(|p| p.name == "inet_sock_set_state")
        .expect("tcptrace holds its state program");
    let dump = Command::new("bpftool")
        .args(["prog", "dump", "xlated", "id", &program.id.to_string()])
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    cli.signal(libc::SIGINT);
    let (code, _, stderr) = cli.exit_within(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{stderr:#?}");
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(text.contains("exit"), "no program dumped: {text}");
    text.matches("call bpf_probe_read_kernel").count()
}

#[test]
fn the_state_program_reads_with_loads_where_the_kernel_allows_and_with_the_helper_when_told() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let layout = tcptrace::kernel::KernelLayout::read_running().expect("the kernel's layout");
    let with_helper = probe_reads_in_the_state_program(&["--json", "--no-direct-reads"]);
    assert!(
        with_helper >= 2,
        "--no-direct-reads: the socket's head and the CPU's preempt count are \
         helper reads, but the program makes {with_helper}"
    );
    let by_default = probe_reads_in_the_state_program(&["--json"]);
    if layout.rdonly_cast.is_some() {
        assert_eq!(
            by_default, 0,
            "this kernel casts with bpf_rdonly_cast, yet the program still calls the helper"
        );
    } else {
        assert_eq!(by_default, with_helper);
    }
}

/// One loopback connection traced with `args`: the client sends 100 bytes
/// the server never reads, closes, then the server closes (a reset for the
/// unread bytes). Each socket as the fields the programs read from kernel
/// memory shape it, by role, with its ports named rather than numbered.
fn sockets_of_a_connection(ip: IpAddr, args: &[&str]) -> Value {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let port_arg = port.to_string();
    let mut client_port = 0;
    let mut all_args = vec!["--port", &port_arg];
    all_args.extend_from_slice(args);
    let (lines, summary) = traced(&all_args, || {
        let mut client = TcpStream::connect((ip, port)).unwrap();
        client_port = client.local_addr().unwrap().port();
        let (server, _) = listener.accept().unwrap();
        client.write_all(&[7; 100]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(client);
        std::thread::sleep(Duration::from_millis(50));
        drop(server);
    });
    let name_port = |endpoint: &Value| {
        let text = endpoint.as_str().unwrap_or_default();
        let (addr, p) = text.rsplit_once(':').unwrap_or((text, ""));
        let p = match p.parse::<u16>() {
            Ok(p) if p == port => "listening port",
            Ok(p) if p == client_port => "client port",
            _ => p,
        };
        format!("{addr}:{p}")
    };
    let tgid = |task: &Value| task["tgid"].clone();
    let mut by_role = serde_json::Map::new();
    for line in lines.iter().filter(|l| l["type"] == "socket") {
        let s = &line["socket"];
        if s["role"] == "listener" {
            continue;
        }
        let steps: Vec<Value> = s["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|step| json!([step["old"], step["new"], step["context"]["kind"]]))
            .collect();
        let resets: Vec<Value> = s["resets_sent"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| json!([r["state"], r["reason"]["code"]]))
            .collect();
        let role = s["role"].as_str().unwrap_or("?").to_string();
        by_role.insert(
            role,
            json!({
                "family": s["family"],
                "local": name_port(&s["local"]),
                "remote": name_port(&s["remote"]),
                "owner": tgid(&s["owner"]),
                "netns": s["netns"],
                "steps": steps,
                "resets_sent": resets,
                "unread": s["unread"],
                "closed_by": tgid(&s["closed_by"]),
                "accepted_by": tgid(&s["accepted"]["by"]),
            }),
        );
    }
    assert!(
        by_role.contains_key("client") && by_role.contains_key("server"),
        "{args:?}: expected a client and a server socket on port {port}; saw {by_role:#?}; {summary}"
    );
    Value::Object(by_role)
}

#[test]
fn plain_loads_and_helper_reads_report_the_same_sockets() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let me = u64::from(std::process::id());
    let my_netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    for ip in ["127.0.0.1", "::1"] {
        let ip: IpAddr = ip.parse().unwrap();
        let loads = sockets_of_a_connection(ip, &[]);
        let helper = sockets_of_a_connection(ip, &["--no-direct-reads"]);
        // What both must say, read from the kernel: the tuple, the owner
        // (this process), the namespace and the bytes never read.
        let server = &loads["server"];
        assert_eq!(server["unread"], 100, "{ip}: {loads:#}");
        assert_eq!(server["owner"], me, "{ip}: {loads:#}");
        assert_eq!(server["netns"], my_netns, "{ip}: {loads:#}");
        assert!(
            server["local"]
                .as_str()
                .is_some_and(|local| local.ends_with(":listening port")),
            "{ip}: {loads:#}"
        );
        assert_eq!(
            loads, helper,
            "{ip}: plain loads (left) and helper reads (right) differ"
        );
    }
}
