//! Network namespaces that a test creates and removes, so that firewall
//! rules and sysctls touch nothing but the test's own traffic.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with its loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program}: {e} (is it installed? `cargo xtask setup`)")
        });
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new(label: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("tt-{label}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// An nftables ruleset for this namespace only.
    pub fn nft(&self, ruleset: &str) {
        self.exec("nft", &[ruleset]);
    }

    /// A namespace whose connects to `port` never get through: its own
    /// firewall drops their SYNs on the way out, and after one SYN
    /// retransmit (about 3 s, all on timers) connect gives up.
    pub fn dropping_outgoing_syns(name: &str, port: u16) -> Netns {
        let ns = Netns::new(name);
        ns.sysctl("net.ipv4.tcp_syn_retries", "1");
        ns.nft(&format!(
            "add table inet tt; \
             add chain inet tt out {{ type filter hook output priority 0; }}; \
             add rule inet tt out tcp dport {port} tcp flags & syn == syn drop"
        ));
        ns
    }

    /// A sysctl of this namespace (`net.*` sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has joined this namespace: sockets it
    /// creates live there (setns(CLONE_NEWNET) affects only that thread).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Joins this namespace to `other` with a veth pair, addressing both ends
    /// (e.g. "192.0.2.1/24" here, "192.0.2.2/24" there).
    pub fn link(&self, other: &Netns, here: &str, there: &str) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (format!("tva{n}"), format!("tvb{n}"));
        self.ip(&[
            "link",
            "add",
            &a,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &other.name,
        ]);
        self.ip(&["addr", "add", here, "dev", &a]);
        self.ip(&["link", "set", &a, "up"]);
        other.ip(&["addr", "add", there, "dev", &b]);
        other.ip(&["link", "set", &b, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
