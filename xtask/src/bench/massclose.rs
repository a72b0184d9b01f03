//! The massclose scenario: under `tcptrace --json`, a child holding many
//! loopback connections is SIGKILLed; once every socket of it is gone,
//! tcptrace is stopped, and its JSON says how many of those sockets it
//! still thought open.

use std::fs::File;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::run::{WorkResult, stem, workload};
use super::tracer::{keep_sample, start_tracer, stop_tracer};
use super::{Config, Ctx, Run, Scenario};
use crate::proc;
use crate::util::command;

/// massclose's JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasscloseOut {
    pub connections: u64,
    pub shards: u32,
    /// The listening ports: every socket of the scenario has one at an end.
    pub ports: Vec<u16>,
    pub killed_pids: Vec<u32>,
    /// Connections where the killed side had bytes unread (it sends RST).
    pub unread_in_killed: u64,
    /// Connections where the listening side had bytes unread.
    pub unread_in_listener: u64,
    pub nofile: u64,
    pub connect_s: f64,
    pub kill_s: f64,
    pub close_s: f64,
}

impl MasscloseOut {
    /// Socket reports expected: both ends of every connection plus one per
    /// listener.
    pub fn expected_sockets(&self) -> u64 {
        2 * self.connections + u64::from(self.shards)
    }
}

/// What a mass-close run found.
#[derive(Debug, Clone, Serialize)]
pub struct MassClose {
    pub out: MasscloseOut,
    /// Seconds from massclose's exit until no socket on its ports was left
    /// but TIME_WAIT ones; None if some were still there at the timeout.
    pub gone_after_s: Option<f64>,
    /// Sockets on its ports still there (TIME_WAIT aside) when tcptrace was
    /// stopped.
    pub left: u64,
    /// What tcptrace's JSON said about the sockets on those ports.
    pub sockets: SocketCounts,
    /// Sockets the kernel closed without TIME_WAIT because its table was
    /// full (`TcpExt TCPTimeWaitOverflow` over the run; None: unreadable).
    /// Within a minute of a churn the table is full, the peers' late FINs
    /// draw resets from no socket, and more sockets are reported.
    pub time_wait_overflows: Option<u64>,
}

/// Socket lines of tcptrace's JSON that have one of the scenario's ports at
/// either end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SocketCounts {
    pub reported: u64,
    /// Reported still open when tcptrace stopped (`"still_open": true`, or
    /// a verdict whose close is `still_open`).
    pub still_open: u64,
    /// Of those, sockets that were no longer there (the target: 0).
    pub still_open_gone: u64,
    /// Reported with a non-empty `incomplete` list.
    pub incomplete: u64,
    /// Reports whose (local, remote) addresses an earlier report had: a
    /// 4-tuple used twice in the run, or one life reported twice.
    pub repeated: u64,
}

pub(super) fn run_massclose(ctx: &Ctx, rep: u32) -> Run {
    let mut run = Run::new(Scenario::Massclose, "massclose", Config::TcptraceJson, rep);
    run.clients = ctx.args.massclose_conns;
    if let Err(e) = try_massclose(ctx, &mut run) {
        run.error = Some(format!("{e:#}"));
    }
    run
}

fn try_massclose(ctx: &Ctx, run: &mut Run) -> Result<()> {
    let a = &ctx.args;
    let stem = stem(ctx, run);
    let tracer = start_tracer(ctx, run.config, &stem)?.context("massclose needs tcptrace")?;
    let overflows_before = time_wait_overflows();
    let mut cmd = command(&ctx.massclose)?;
    cmd.args(["--conns", &a.massclose_conns.to_string()])
        .args(["--port", &a.massclose_port.to_string()])
        .args(["--timeout", &a.massclose_timeout.to_string()]);
    // Connecting, closing, and the coordinator's own waits.
    let limit = Duration::from_secs(3 * a.massclose_timeout + 30);
    let workload: WorkResult<MasscloseOut> =
        workload(cmd, "massclose", &stem.with_extension("massclose"), limit)?;
    let out_path = tracer.out_path.clone();
    let out = match workload {
        Ok(o) => o,
        Err((_, e)) => {
            let _ = stop_tracer(ctx, tracer, run, "the mass close");
            keep_sample(&out_path, run.rep);
            return Err(e);
        }
    };

    // tcptrace is stopped only once every socket of the scenario is gone,
    // so that any it reports still open is wrong.
    let waited = Instant::now();
    let deadline = waited + Duration::from_secs(a.massclose_timeout);
    let left = loop {
        proc::check_interrupted()?;
        let left: Vec<proc::NetSock> = proc::tcp_sockets()?
            .into_iter()
            .filter(|s| s.state != proc::TCP_TIME_WAIT)
            .filter(|s| out.ports.contains(&s.local_port) || out.ports.contains(&s.remote_port))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let gone_after_s = left.is_empty().then(|| waited.elapsed().as_secs_f64());
    let time_wait_overflows = overflows_before
        .zip(time_wait_overflows())
        .map(|(before, after)| after.saturating_sub(before));

    let stopped = stop_tracer(ctx, tracer, run, "the mass close");
    let present: Vec<(u16, u16)> = left.iter().map(|s| (s.local_port, s.remote_port)).collect();
    let scanned = File::open(&out_path)
        .with_context(|| format!("reading {}", out_path.display()))
        .map(|f| scan_sockets(std::io::BufReader::new(f), &out.ports, &present));
    // A count off from the expected one is kept whole, to be looked into.
    let off = scanned
        .as_ref()
        .is_ok_and(|c| c.reported != out.expected_sockets());
    if off {
        eprintln!(
            "  massclose: socket reports differ from the expected {}; kept whole: {}",
            out.expected_sockets(),
            out_path.display()
        );
    } else {
        keep_sample(&out_path, run.rep);
    }
    stopped?;
    run.massclose = Some(MassClose {
        out,
        gone_after_s,
        left: left.len() as u64,
        sockets: scanned?,
        time_wait_overflows,
    });
    Ok(())
}

/// This namespace's count of sockets closed without TIME_WAIT for want of
/// a bucket; None when /proc/net/netstat cannot say.
fn time_wait_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    tcptrace_common::netstat::tcp_ext(&text)?
        .find(|&(name, _)| name == "TCPTimeWaitOverflow")
        .map(|(_, v)| v)
}

/// The parts of a `{"type":"socket",…}` line of tcptrace's JSON that the
/// mass close looks at (schema: tcptrace/src/render/json.rs).
#[derive(Deserialize)]
struct SocketLine {
    socket: SocketPart,
    verdict: VerdictPart,
}

#[derive(Deserialize)]
struct SocketPart {
    local: String,
    remote: String,
    #[serde(default)]
    still_open: bool,
}

#[derive(Deserialize)]
struct VerdictPart {
    close: ClosePart,
    #[serde(default)]
    incomplete: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct ClosePart {
    kind: String,
}

/// The port of "127.0.0.1:23900" or "[::1]:23900".
fn addr_port(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Counts the socket lines of tcptrace's JSON with one of `ports` at either
/// end; a socket reported still open counts as gone unless its
/// (local, remote) ports are among `present`.
fn scan_sockets(
    text: impl std::io::BufRead,
    ports: &[u16],
    present: &[(u16, u16)],
) -> SocketCounts {
    let mut c = SocketCounts::default();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let Ok(line) = line else { break };
        if !line.starts_with(r#"{"type":"socket""#) {
            continue;
        }
        let Ok(l) = serde_json::from_str::<SocketLine>(&line) else {
            continue;
        };
        let (Some(lp), Some(rp)) = (addr_port(&l.socket.local), addr_port(&l.socket.remote)) else {
            continue;
        };
        if !ports.contains(&lp) && !ports.contains(&rp) {
            continue;
        }
        c.reported += 1;
        if !seen.insert((l.socket.local.clone(), l.socket.remote.clone())) {
            c.repeated += 1;
        }
        if !l.verdict.incomplete.is_empty() {
            c.incomplete += 1;
        }
        if l.socket.still_open || l.verdict.close.kind == "still_open" {
            c.still_open += 1;
            if !present.contains(&(lp, rp)) {
                c.still_open_gone += 1;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn massclose_json_counts() {
        // Lines as tcptrace/src/render/json.rs writes them, cut down to the
        // fields read here plus a few neighbours.
        let open = |local: &str, remote: &str, still: bool, close: &str, inc: &str| {
            format!(
                r#"{{"type":"socket","socket":{{"skaddr":"0xffff1","family":"ipv4","local":"{local}","remote":"{remote}","role":"client","steps":[],"still_open":{still},"events_lost":false}},"verdict":{{"open":{{"kind":"active","established":true,"handshake_ns":1}},"close":{{"kind":"{close}","state":"ESTABLISHED"}},"incomplete":[{inc}],"summary":"x","attribution":null}}}}"#
            )
        };
        // The killed child's side, closed properly.
        let closed = open(
            "127.0.0.1:40000",
            "127.0.0.1:23900",
            false,
            "reset_sent",
            "",
        );
        let text = [
            closed.clone(),
            // Gone, but reported still open: counted.
            open("127.0.0.1:40001", "127.0.0.1:23900", true, "still_open", ""),
            // The listening side, still there when tcptrace stopped: not.
            open(
                "127.0.0.1:23901",
                "127.0.0.1:40002",
                true,
                "still_open",
                r#""gap""#,
            ),
            // Someone else's socket.
            open("127.0.0.1:5555", "127.0.0.1:6666", true, "still_open", ""),
            // The first socket's addresses again: a repeat.
            closed,
            r#"{"type":"transition","skaddr_hex":"0x1","event":"state"}"#.to_owned(),
            "not json".to_owned(),
        ]
        .join("\n");
        let c = scan_sockets(text.as_bytes(), &[23900, 23901], &[(23901, 40002)]);
        assert_eq!(
            c,
            SocketCounts {
                reported: 4,
                still_open: 2,
                still_open_gone: 1,
                incomplete: 1,
                repeated: 1,
            }
        );
        assert_eq!(addr_port("[::1]:23900"), Some(23900));
        assert_eq!(addr_port("nonsense"), None);
    }
}
