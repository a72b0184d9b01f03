//! The stream view's JSON lines: one per record, as its type derives
//! `Serialize` (see the schema in [`super`]).

use super::{
    push_bool, push_context, push_drop_reason, push_error_fields, push_opt_i64, push_opt_proc,
    push_opt_reset_reason, push_opt_state, push_opt_u64, push_proc, push_state, push_u64,
};
use crate::{
    decode::{Context, Proc, Record, SegmentDrop, SockInfo},
    render::{push_addr, push_hex},
};

/// [`super::record_line`], appended to `out`.
pub(crate) fn push_record_line(out: &mut String, record: &Record) {
    out.push_str(match record {
        Record::State { .. } => r#"{"type":"transition""#,
        _ => r#"{"type":"event""#,
    });
    if let Some(sock) = record.sock() {
        // The skaddr as sockets print it: the raw number exceeds 2^53, which
        // JSON parsers that use doubles cannot hold exactly.
        out.push_str(r#","skaddr_hex":"0x"#);
        push_hex(out, sock.skaddr, 0);
        out.push('"');
    }
    match record {
        Record::State {
            sock,
            old,
            new,
            unread,
            peer_fin,
        } => {
            out.push_str(r#","event":"state""#);
            push_sock_fields(out, sock);
            out.push_str(r#","old":"#);
            push_state(out, *old);
            out.push_str(r#","new":"#);
            push_state(out, *new);
            out.push_str(r#","unread":"#);
            push_opt_u64(out, unread.map(u64::from));
            out.push_str(r#","peer_fin":"#);
            match peer_fin {
                Some(b) => push_bool(out, *b),
                None => out.push_str("null"),
            }
        }
        Record::SendReset {
            sock,
            state,
            reason,
            segment_flags,
        } => {
            out.push_str(r#","event":"send_reset""#);
            push_sock_fields(out, sock);
            out.push_str(r#","state":"#);
            push_opt_state(out, *state);
            out.push_str(r#","reason":"#);
            push_opt_reset_reason(out, reason.as_ref());
            out.push_str(r#","segment_flags":"#);
            push_opt_u64(out, segment_flags.map(u64::from));
        }
        Record::ReceiveReset { sock } => {
            out.push_str(r#","event":"receive_reset""#);
            push_sock_fields(out, sock);
        }
        Record::Retransmit { sock, state } => {
            out.push_str(r#","event":"retransmit""#);
            push_sock_fields(out, sock);
            out.push_str(r#","state":"#);
            push_opt_state(out, *state);
        }
        Record::RetransmitSynAck { sock } => {
            out.push_str(r#","event":"retransmit_syn_ack""#);
            push_sock_fields(out, sock);
        }
        Record::Destroy { sock } => {
            out.push_str(r#","event":"destroy""#);
            push_sock_fields(out, sock);
        }
        Record::Accept { sock } => {
            out.push_str(r#","event":"accept""#);
            push_sock_fields(out, sock);
        }
        Record::ErrorReport {
            sock,
            errno,
            retransmits,
            probes,
            user_timeout_ms,
            icmp_queued,
        } => {
            out.push_str(r#","event":"error""#);
            push_sock_fields(out, sock);
            push_error_fields(
                out,
                *errno,
                *retransmits,
                *probes,
                *user_timeout_ms,
                *icmp_queued,
            );
        }
        Record::ProcessExit {
            ts_ns,
            task,
            exit_code,
            group_dead,
        } => {
            out.push_str(r#","event":"process_exit","ts_ns":"#);
            push_u64(out, *ts_ns);
            out.push_str(r#","task":"#);
            push_proc(out, task);
            out.push_str(r#","exit_code":"#);
            push_opt_i64(out, exit_code.map(i64::from));
            out.push_str(r#","group_dead":"#);
            push_bool(out, *group_dead);
        }
        Record::Drop(d) => push_drop_fields(out, d),
        Record::Signal {
            ts_ns,
            sig,
            target_pid,
            sender,
            delivered,
        } => {
            out.push_str(r#","event":"signal","ts_ns":"#);
            push_u64(out, *ts_ns);
            out.push_str(r#","sig":"#);
            push_u64(out, u64::from(*sig));
            out.push_str(r#","target_pid":"#);
            push_u64(out, u64::from(*target_pid));
            out.push_str(r#","sender":"#);
            push_proc(out, sender);
            out.push_str(r#","delivered":"#);
            push_bool(out, *delivered);
        }
        Record::OomVictim {
            ts_ns,
            victim_pid,
            context,
        } => {
            out.push_str(r#","event":"oom_victim","ts_ns":"#);
            push_u64(out, *ts_ns);
            out.push_str(r#","victim_pid":"#);
            push_u64(out, u64::from(*victim_pid));
            out.push_str(r#","context":"#);
            push_proc(out, context);
        }
    }
    out.push('}');
}

/// The fields of a [`SockInfo`], each after a comma (it is flattened).
fn push_sock_fields(out: &mut String, sock: &SockInfo) {
    out.push_str(r#","ts_ns":"#);
    push_u64(out, sock.ts_ns);
    out.push_str(r#","cpu":"#);
    push_u64(out, u64::from(sock.cpu));
    out.push_str(r#","skaddr":"#);
    push_u64(out, sock.skaddr);
    out.push_str(r#","local":""#);
    push_addr(out, &sock.local);
    out.push_str(r#"","remote":""#);
    push_addr(out, &sock.remote);
    out.push('"');
    push_origin(out, &sock.context, sock.owner.as_ref(), sock.netns);
    if sock.shared_listener {
        out.push_str(r#","shared_listener":true"#);
    }
}

/// `,"context":…,"owner":…,"netns":…`: who and where, as sockets and drops
/// both carry it.
fn push_origin(out: &mut String, context: &Context, owner: Option<&Proc>, netns: Option<u32>) {
    out.push_str(r#","context":"#);
    push_context(out, context);
    out.push_str(r#","owner":"#);
    push_opt_proc(out, owner);
    out.push_str(r#","netns":"#);
    push_opt_u64(out, netns.map(u64::from));
}

/// `,"event":"drop",…` of a dropped segment.
fn push_drop_fields(out: &mut String, d: &SegmentDrop) {
    out.push_str(r#","event":"drop","ts_ns":"#);
    push_u64(out, d.ts_ns);
    out.push_str(r#","cpu":"#);
    push_u64(out, u64::from(d.cpu));
    out.push_str(r#","rx_sk":"#);
    push_opt_hex(out, d.rx_sk);
    out.push_str(r#","skb_sk":"#);
    push_opt_hex(out, d.skb_sk);
    out.push_str(r#","source":""#);
    push_addr(out, &d.source);
    out.push_str(r#"","destination":""#);
    push_addr(out, &d.destination);
    out.push('"');
    push_origin(out, &d.context, d.owner.as_ref(), d.netns);
    out.push_str(r#","reason":"#);
    push_drop_reason(out, &d.reason);
    out.push_str(r#","segment_flags":"#);
    push_u64(out, u64::from(d.segment_flags));
    if d.answered_by_time_wait {
        out.push_str(r#","answered_by_time_wait":true"#);
    }
}

fn push_opt_hex(out: &mut String, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push_str("\"0x");
            push_hex(out, v, 0);
            out.push('"');
        }
        None => out.push_str("null"),
    }
}
