//! `--snapshot`: the TCP sockets open when tracing starts, one per line,
//! with the processes holding them (text like `ss -tp`, or JSON).

use std::{
    io::{self, Write},
    net::SocketAddr,
};

use serde::Serialize;

use super::{escape::escape_into, push_addr, push_u64};
use crate::{
    snapshot::{OpenSocket, Snapshot},
    sockdiag::state,
};

#[derive(Serialize)]
struct HolderJson<'a> {
    pid: u32,
    /// Raw bytes as text (JSON strings escape what needs escaping).
    comm: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
struct SocketJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    state: &'static str,
    local: String,
    remote: String,
    netns: u64,
    cookie: u64,
    inode: u64,
    /// The owner first (the process that created or listens on it).
    holders: Vec<HolderJson<'a>>,
}

/// Writes every socket of `snapshot` that `keep` selects; returns how many.
pub fn write_snapshot(
    out: &mut dyn Write,
    snapshot: &Snapshot,
    json: bool,
    keep: impl Fn(&OpenSocket) -> bool,
) -> io::Result<usize> {
    let mut n = 0;
    let mut line = String::new();
    for open in snapshot.sockets.iter().filter(|o| keep(o)) {
        n += 1;
        line.clear();
        let s = &open.socket;
        let local = SocketAddr::new(s.src, s.sport);
        let remote = SocketAddr::new(s.dst, s.dport);
        if json {
            let j = SocketJson {
                kind: "snapshot",
                state: state::name(s.state),
                local: local.to_string(),
                remote: remote.to_string(),
                netns: s.netns_inode,
                cookie: s.cookie,
                inode: s.inode,
                holders: open
                    .holders
                    .iter()
                    .map(|h| HolderJson {
                        pid: h.pid,
                        comm: String::from_utf8_lossy(&h.comm),
                    })
                    .collect(),
            };
            line.push_str(&serde_json::to_string(&j)?);
        } else {
            line.push_str("open at start  ");
            line.push_str(state::name(s.state));
            line.push_str("  ");
            push_addr(&mut line, &local);
            line.push_str(if s.state == state::LISTEN {
                ""
            } else {
                " ↔ "
            });
            if s.state != state::LISTEN {
                push_addr(&mut line, &remote);
            }
            line.push_str("  netns ");
            push_u64(&mut line, s.netns_inode);
            line.push_str("  ");
            if open.holders.is_empty() {
                line.push_str("no process holds it");
            }
            for (i, h) in open.holders.iter().enumerate() {
                if i > 0 {
                    line.push_str(", ");
                }
                escape_into(&mut line, &String::from_utf8_lossy(&h.comm));
                line.push('[');
                push_u64(&mut line, u64::from(h.pid));
                line.push(']');
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(n)
}
