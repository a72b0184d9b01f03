//! The `tcp:` reset, retransmit and destroy tracepoints and
//! `sock:inet_sk_error_report`: one socket event each, built from the
//! socket's head (the per-transition program is in the crate root).

use core::mem::MaybeUninit;

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tcptrace_common::{ABSENT, ArgPos, Event, NO_ARG, QUEUED_ERROR, filter, flag, kind, oddity};

use crate::{
    Args, attach_owner, config, finish_sock_event, forget_owner, is_tcp, new_event, odd,
    read::{self, SockFields, SockHead, read_kernel, with_sock_head},
    submit,
};

/// The reset, retransmit and destroy tracepoints: a socket (and its state),
/// an integer argument where the tracepoint has one.
#[inline(always)]
fn sock_event(ctx: &RawTracePointContext, pos: &ArgPos, event_kind: u8) -> i32 {
    let args = Args::of(ctx, pos);
    let sk = args.get(pos.sk);
    let mut slot = MaybeUninit::uninit();
    let event = new_event(&mut slot, event_kind, sk);
    // A SYN/ACK retransmit describes the request socket, whose head is a
    // sock_common too; skaddr stays the listener's.
    let tuple_of = if pos.req != NO_ARG {
        args.get(pos.req)
    } else {
        sk
    };
    if tuple_of != 0 && !with_sock_head!(tuple_of, |head| fill_from(&head, event), else false) {
        odd::oddity(oddity::SOCK_HEAD, u64::from(event_kind));
        return 0;
    }
    if pos.int0 != NO_ARG {
        event.value = args.get(pos.int0) as u32;
        if event_kind == kind::SEND_RESET {
            event.flags |= flag::REASON_VALID;
        }
    }
    if event_kind == kind::SEND_RESET && pos.skb != NO_ARG {
        read::reset_without_full_socket(args.get(pos.skb), event);
    }
    attach_owner(event);
    finish_sock_event(event);
    0
}

/// The tuple, state and cookie (and namespace, for its filter) from the
/// socket's head. True: read.
#[inline(always)]
fn fill_from<F: SockFields>(head: &SockHead<F>, event: &mut Event) -> bool {
    head.fill_endpoints(event);
    event.newstate = head.state();
    event.aux = head.cookie();
    if config().filter.flags & filter::NETNS != 0 {
        event.netns = head.netns();
    }
    true
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    sock_event(&ctx, &config().send_reset, kind::SEND_RESET)
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    sock_event(&ctx, &config().receive_reset, kind::RECEIVE_RESET)
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    sock_event(&ctx, &config().retransmit_skb, kind::RETRANSMIT_SKB)
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: RawTracePointContext) -> i32 {
    sock_event(&ctx, &config().retransmit_synack, kind::RETRANSMIT_SYNACK)
}

/// The end of a socket. With a filter on, it is judged like any socket
/// event (its tuple and owner read), and under process filters the kernel's
/// record of its owner goes with it. Without one, its address and time
/// are all userspace needs (the socket's life knows the rest): two helper
/// calls (the time, the output) instead of six, on one event per socket.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    let pos = &config().destroy_sock;
    if config().filter.flags != 0 {
        sock_event(&ctx, pos, kind::DESTROY_SOCK);
        forget_owner(Args::of(&ctx, pos).get(pos.sk));
        return 0;
    }
    let args = Args::of(&ctx, pos);
    let mut slot = MaybeUninit::uninit();
    let event = new_event(&mut slot, kind::DESTROY_SOCK, args.get(pos.sk));
    submit(event);
    0
}

/// A TCP socket's error was set (a retransmission or keepalive timeout, an
/// ICMP error, a reset): why a connection failed, in the kernel's words.
/// Rare; reads the error and the retransmit and probe counts.
#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let pos = &cfg.error_report;
    let args = Args::of(&ctx, pos);
    let sk = args.get(pos.sk);
    let o = &cfg.sock;
    if o.protocol == ABSENT {
        // Before Linux 5.6 sk_protocol is a bitfield: UDP's errors could
        // not be told from TCP's.
        return 0;
    }
    with_sock_head!(sk, |head| error_report_from(sk, head), else {
        odd::oddity(oddity::ERROR_REPORT_SOCK, sk)
    });
    0
}

/// [`inet_sk_error_report`]'s event, from the socket's head.
#[inline(always)]
fn error_report_from<F: SockFields>(sk: u64, head: SockHead<F>) {
    let o = &config().sock;
    // UDP and raw sockets report errors here too: the head already read
    // tells TCP's (see is_tcp), without reading sk_protocol for each.
    match is_tcp(&head) {
        Some(true) => {}
        Some(false) => return,
        None => {
            odd::oddity(oddity::ERROR_REPORT_SOCK, sk);
            return;
        }
    }
    let mut slot = MaybeUninit::uninit();
    let event = new_event(&mut slot, kind::ERROR_REPORT, sk);
    head.fill_endpoints(event);
    event.newstate = head.state();
    event.aux = head.cookie();
    let byte = |offset: u16| {
        if offset == ABSENT {
            return 0;
        }
        head.far::<u8>(u32::from(offset)).unwrap_or_else(|| {
            odd::oddity(oddity::ERROR_READ, sk);
            0
        })
    };
    if o.sk_err != ABSENT {
        match head.far::<i32>(u32::from(o.sk_err)) {
            Some(err) => event.value = err as u32,
            None => odd::oddity(oddity::ERROR_READ, sk),
        }
    }
    // No error set yet: an ICMP error was just queued (ip_icmp_error
    // reports it before TCP decides to set sk_err, or only sk_err_soft):
    // its errno is in the newest queued skb's control block.
    if event.value == 0 && o.error_queue != ABSENT && o.queued_errno != ABSENT {
        let queue = sk + u64::from(o.error_queue);
        let skb = head
            .far::<u64>(u32::from(o.error_queue) + u32::from(o.queue_prev))
            .unwrap_or(0);
        // An empty queue's `prev` points at the queue head itself.
        if skb != 0 && skb != queue {
            match read_kernel::<u32>(skb + u64::from(o.queued_errno)) {
                Some(err) if err != 0 => event.value = err | QUEUED_ERROR,
                Some(_) => {}
                None => odd::oddity(oddity::ERROR_READ, sk),
            }
        }
    }
    event.seg_flags = u16::from(byte(o.retransmits)) | (u16::from(byte(o.probes)) << 8);
    // TCP_USER_TIMEOUT, when set, is what gave up (not tcp_retries2 or the
    // keepalive count): one more read, on this rare path only.
    if o.user_timeout != ABSENT {
        match head.far::<u32>(u32::from(o.user_timeout)) {
            Some(ms) => event.unread = ms,
            None => odd::oddity(oddity::ERROR_READ, sk),
        }
    }
    attach_owner(event);
    finish_sock_event(event);
}
