//! The verdict of a socket line: its codes, as the serde derives of
//! [`Verdict`] write them, and beside them the words for them.

use super::{
    json_plain, push_bool, push_drop_reason, push_opt_addr, push_opt_state, push_opt_str,
    push_opt_u64, push_str, push_u64,
};
use crate::{
    model::{Close, Open, RstReason, Side, SocketLife, Verdict},
    render::words,
};

pub(super) fn push_verdict(out: &mut String, life: &SocketLife, v: &Verdict) {
    out.push_str(r#"{"open":{"kind":""#);
    out.push_str(v.open.kind());
    out.push('"');
    match &v.open {
        Open::Active {
            established,
            handshake_ns,
        } => {
            out.push_str(r#","established":"#);
            push_bool(out, *established);
            out.push_str(r#","handshake_ns":"#);
            push_opt_u64(out, *handshake_ns);
        }
        Open::Passive {
            established,
            handshake_ns,
            listener,
        } => {
            out.push_str(r#","established":"#);
            push_bool(out, *established);
            out.push_str(r#","handshake_ns":"#);
            push_opt_u64(out, *handshake_ns);
            out.push_str(r#","listener":"#);
            push_opt_addr(out, listener.as_ref());
        }
        Open::Listen | Open::NoSocket | Open::Unknown => {}
    }
    out.push_str(r#"},"close":{"kind":""#);
    out.push_str(v.close.kind());
    out.push('"');
    match &v.close {
        Close::Active { time_wait } => {
            out.push_str(r#","time_wait":"#);
            push_bool(out, *time_wait);
        }
        Close::Refused { side, reason } => {
            out.push_str(match side {
                Side::Client => r#","side":"client","reason":"#,
                Side::Server => r#","side":"server","reason":"#,
            });
            match reason {
                // The peer's reason: its context is not known here.
                Some(r) => push_rst_reason(out, r, None),
                None => out.push_str("null"),
            }
        }
        Close::ResetReceived { state }
        | Close::StillOpen { state }
        | Close::ClosedUnseen { state } => {
            out.push_str(r#","state":"#);
            push_opt_state(out, *state);
        }
        Close::ResetSent { state, reason } => {
            out.push_str(r#","state":"#);
            push_opt_state(out, *state);
            out.push_str(r#","reason":"#);
            push_rst_reason(out, reason, Some(life.unaccepted));
        }
        Close::HandshakeTimeout {
            syn_retransmits,
            syns_dropped,
        } => {
            out.push_str(r#","syn_retransmits":"#);
            push_u64(out, u64::from(*syn_retransmits));
            out.push_str(r#","syns_dropped":"#);
            match syns_dropped {
                Some(d) => {
                    out.push_str(r#"{"count":"#);
                    push_u64(out, u64::from(d.count));
                    out.push_str(r#","reason":"#);
                    push_drop_reason(out, &d.reason);
                    out.push('}');
                }
                None => out.push_str("null"),
            }
        }
        Close::NoSocketReset { segment_flags } => {
            out.push_str(r#","segment_flags":"#);
            push_u64(out, u64::from(*segment_flags));
        }
        Close::Passive
        | Close::PeerNeverClosed
        | Close::Simultaneous
        | Close::HandshakeFailed
        | Close::Aborted
        | Close::StoppedListening
        | Close::Unknown => {}
    }
    out.push_str(r#"},"incomplete":["#);
    for (i, what) in v.incomplete.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(what.code());
        out.push('"');
    }
    out.push_str(r#"],"summary":"#);
    push_str_with(out, |s| words::summary_into(s, life, v));
    out.push_str(r#","attribution":"#);
    let mark = out.len();
    let mut said = false;
    push_str_with(out, |s| said = words::attribution_into(s, life, v));
    if !said {
        out.truncate(mark);
        out.push_str("null");
    }
    out.push('}');
}

fn push_rst_reason(out: &mut String, r: &RstReason, unaccepted: Option<bool>) {
    out.push_str(r#"{"code":"#);
    push_opt_u64(out, r.code.map(u64::from));
    out.push_str(r#","name":"#);
    push_opt_str(out, r.name.as_deref());
    out.push_str(r#","text":"#);
    push_str_with(out, |s| words::reason_text_in(s, r, unaccepted));
    out.push('}');
}

/// [`push_str`] of what `write` appends, written in place: no string of
/// its own unless it needs escaping.
fn push_str_with(out: &mut String, write: impl FnOnce(&mut String)) {
    let quote = out.len();
    out.push('"');
    write(out);
    if json_plain(&out.as_bytes()[quote + 1..]) {
        out.push('"');
    } else {
        let raw = out.split_off(quote + 1);
        out.truncate(quote);
        push_str(out, &raw);
    }
}
