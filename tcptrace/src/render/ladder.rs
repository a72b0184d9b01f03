//! The sockets view: one ladder per finished socket, rows in time order with
//! what each transition put on the wire, then the verdict and who closed it.
//!
//! ```text
//! 127.0.0.1:45126 → 127.0.0.1:8099  client  python3[2251]  0.948 ms  sk 0xffff888123456000
//!   +0.000    CLOSE → SYN_SENT           SYN →
//!   +0.062    SYN_SENT → ESTABLISHED     ← SYN/ACK  ACK →   handshake 0.062 ms
//!   +0.911    ESTABLISHED → FIN_WAIT1    FIN →
//!   +0.930    FIN_WAIT1 → FIN_WAIT2      ← ACK              in softirq
//!   +0.948    FIN_WAIT2 → CLOSE          ← FIN  ACK →       (TIME_WAIT) in softirq
//!   = active open (3-way) · active close (4-way)
//!   closed by python3[2251] → FIN
//! ```

use std::io::{self, Write};

use super::{RenderOptions, Tone, escape, fmt_ms, paint, wall_clock};
use crate::classify::{RstReason, Verdict, proc_label};
use crate::decode::{Context, TcpState};
use crate::tracker::{RetransmitKind, Role, SocketLife, Step};

struct Row {
    offset_ns: u64,
    label: String,
    wire: String,
    note: String,
    tone: Tone,
}

pub(crate) fn write(
    out: &mut dyn Write,
    life: &SocketLife,
    verdict: &Verdict,
    opts: &RenderOptions,
) -> io::Result<()> {
    writeln!(out, "{}", header(life, opts))?;
    for row in rows(life, verdict) {
        let offset = format!("+{}", fmt_ms(row.offset_ns));
        let line = format!(
            "  {offset:<9} {:<26} {:<18} {}",
            row.label, row.wire, row.note
        );
        writeln!(out, "{}", paint(opts.color, row.tone, line.trim_end()))?;
    }
    if life.data_retransmits > 0 {
        writeln!(out, "  · {} data retransmits", life.data_retransmits)?;
    }
    let verdict_line = format!("  = {}", escape(&verdict.summary));
    writeln!(out, "{}", paint(opts.color, Tone::Bold, &verdict_line))?;
    if let Some(attribution) = &verdict.attribution {
        // Only process names in it can need escaping; the rest is our text.
        writeln!(out, "  {}", escape(attribution))?;
    }
    writeln!(out)
}

fn owner_label(life: &SocketLife) -> String {
    life.owner
        .as_ref()
        .map_or_else(|| "owner unknown".to_owned(), |p| escape(&proc_label(p)))
}

fn header(life: &SocketLife, opts: &RenderOptions) -> String {
    let when = match opts.timestamp {
        true => format!("{}  ", wall_clock(life.start_ns, opts.wall_offset_ns)),
        false => String::new(),
    };
    let dur = fmt_ms(life.duration_ns);
    if life.socketless {
        return format!("{when}{} ← {}  server (no socket)", life.local, life.remote);
    }
    let sk = paint(opts.color, Tone::Dim, &format!("sk {:#x}", life.skaddr));
    let owner = owner_label(life);
    match life.role {
        Role::Listener => {
            let children = match life.children {
                1 => "1 child".to_owned(),
                n => format!("{n} children"),
            };
            format!(
                "{when}{}  listener  {owner}  {dur} ms  {children}  {sk}",
                life.local
            )
        }
        role => {
            // The arrow points from the side that opened the connection.
            let arrow = match role {
                Role::Server => "←",
                Role::Client => "→",
                _ => "—",
            };
            format!(
                "{when}{} {arrow} {}  {}  {owner}  {dur} ms  {sk}",
                life.local,
                life.remote,
                role.name()
            )
        }
    }
}

/// What a transition implies on the wire, from this socket's point of view.
fn wire(step: &Step, life: &SocketLife) -> &'static str {
    use TcpState::*;
    match (step.old, step.new) {
        (Close, SynSent) => "SYN →",
        (SynSent, Established) => "← SYN/ACK  ACK →",
        (Listen, SynRecv) => "← SYN  SYN/ACK →",
        (SynRecv, Established) => "← ACK",
        (Established | SynRecv, FinWait1) => "FIN →",
        (FinWait1, FinWait2) => "← ACK",
        (FinWait1, Closing) | (Established, CloseWait) | (_, TimeWait) => "← FIN  ACK →",
        (FinWait2, Close) if life.time_wait => "← FIN  ACK →",
        (Closing, Close) | (LastAck, Close) => "← ACK",
        (CloseWait, LastAck) => "FIN →",
        _ => "",
    }
}

fn context_note(context: &Context, life: &SocketLife, closing: bool) -> Option<String> {
    match context {
        // Worth saying when it is not the owner acting.
        Context::Process(p)
            if !p.is_idle() && life.owner.as_ref().is_none_or(|o| o.tgid != p.tgid) =>
        {
            Some(format!("by {}", escape(&proc_label(p))))
        }
        // A close from the network or a timer, not from the application.
        Context::Softirq { .. } if closing => Some("in softirq".to_owned()),
        _ => None,
    }
}

fn step_row(step: &Step, life: &SocketLife, verdict: &Verdict) -> Row {
    use TcpState::*;
    let mut notes = Vec::new();
    if matches!((step.old, step.new), (SynSent | SynRecv, Established))
        && let Some(ns) = verdict.open.handshake_ns()
    {
        notes.push(format!("handshake {} ms", fmt_ms(ns)));
    }
    let is_last_close = life.close_step().is_some_and(|c| std::ptr::eq(c, step));
    if is_last_close {
        if life.time_wait {
            notes.push("(TIME_WAIT)".to_owned());
        }
        if let Some(n) = life.unread.filter(|&n| n > 0) {
            notes.push(format!("{n} bytes unread"));
        }
    }
    notes.extend(context_note(&step.context, life, step.new == Close));
    Row {
        offset_ns: step.offset_ns,
        label: format!("{} → {}", step.old, step.new),
        wire: wire(step, life).to_owned(),
        note: notes.join(" "),
        tone: Tone::Plain,
    }
}

fn rows(life: &SocketLife, verdict: &Verdict) -> Vec<Row> {
    let mut rows: Vec<Row> = life
        .steps
        .iter()
        .map(|s| step_row(s, life, verdict))
        .collect();
    rows.extend(life.resets_sent.iter().map(|r| {
        Row {
            offset_ns: r.offset_ns,
            label: "RST sent".to_owned(),
            wire: "RST →".to_owned(),
            note: [
                Some(escape(&RstReason::from_kernel(r.reason.as_ref()).long())),
                context_note(&r.context, life, false),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
            tone: Tone::Red,
        }
    }));
    rows.extend(life.resets_received.iter().map(|r| Row {
        offset_ns: r.offset_ns,
        label: "RST received".to_owned(),
        wire: "← RST".to_owned(),
        note: String::new(),
        tone: Tone::Yellow,
    }));
    rows.extend(life.retransmits.iter().filter_map(|r| {
        let (label, seg) = match r.kind {
            RetransmitKind::Syn => ("SYN retransmit", "SYN"),
            RetransmitKind::Synack => ("SYN/ACK retransmit", "SYN/ACK"),
            // Counted in a line of their own: rows would drown the ladder.
            RetransmitKind::Data => return None,
        };
        Some(Row {
            offset_ns: r.offset_ns,
            label: label.to_owned(),
            wire: format!("{seg} → (retransmit #{})", r.number),
            note: String::new(),
            tone: Tone::Plain,
        })
    }));
    // Stable: equal times keep steps before the resets they caused.
    rows.sort_by_key(|r| r.offset_ns);
    rows
}
