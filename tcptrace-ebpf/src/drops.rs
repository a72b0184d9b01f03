//! `skb:kfree_skb`: a segment the kernel dropped, with its reason.
//!
//! The tracepoint fires for every packet the kernel frees unsent or
//! unprocessed, whatever its protocol: on a busy host, far more often than
//! any TCP state change. So the program reads as little as it can before it
//! knows the drop matters, and returns at the first sign it does not:
//!
//! 1. the reason (an argument, no read): not a drop, or a socket's own
//!    queues freed at its end (`QUEUE_PURGE`, nothing lost on the wire);
//! 2. one read of the buffer's head fields (`protocol`, `network_header`,
//!    `tail`, `head`, side by side in `struct sk_buff`): not IPv4 or IPv6;
//! 3. one read of the IP header and the first 16 bytes of TCP after it:
//!    not TCP, headers not in the linear part, or neither a SYN, FIN nor
//!    RST (nor a segment dropped for accept-queue overflow).
//!
//! Only then does it read who owns the buffer (`skb->sk`), apply the user's
//! filters and submit an event. Userspace ties it to a socket.

use core::mem::MaybeUninit;

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tcptrace_common::{
    AF_INET, AF_INET6, Config, Event, IPPROTO_TCP, SKB_WINDOW_BYTES, counter, filter, flag, kind,
    oddity,
};

use crate::{
    Args, OWNERS, config, copy_task, count, new_event, odd, process_passes,
    read::{self, read_kernel},
    submit,
};

/// Drop reasons below this are not drops (`SKB_NOT_DROPPED_YET`,
/// `SKB_CONSUMED`); the tracepoint should never carry them.
const FIRST_DROP_REASON: u32 = 2;
/// Ethertypes as `sk_buff.protocol` holds them (network order, read as a
/// little-endian u16).
const ETH_P_IP: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
/// `network_header` of a buffer that has none.
const NO_HEADER: u16 = u16::MAX;
/// TCP flag bits that make a segment part of a handshake or a close.
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// The head of the IP header and the TCP header's first 16 bytes (ports,
/// sequence numbers, flags), for IPv6 or an IPv4 header without options.
const HEADERS_BYTES: usize = 56;

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let pos = &cfg.drop.args;
    let args = Args::of(&ctx, pos);
    let reason = args.get(pos.int0) as u32;
    if reason < FIRST_DROP_REASON || reason == cfg.drop.codes.queue_purge {
        return 0;
    }
    let skb = args.get(pos.skb);
    if let Some(segment) = Segment::read(skb, reason, cfg) {
        segment_event(&segment, &args, reason, cfg);
    }
    0
}

/// What the headers of a dropped TCP segment say.
struct Segment {
    skb: u64,
    family: u16,
    sport: u16,
    dport: u16,
    flags: u8,
    /// Network order, IPv4 in the first word.
    saddr: [u32; 4],
    daddr: [u32; 4],
}

impl Segment {
    /// The segment in `skb`, when it is TCP and matters; two reads.
    #[inline(always)]
    fn read(skb: u64, reason: u32, cfg: &Config) -> Option<Segment> {
        let (o, d) = (&cfg.skb, &cfg.drop.skb);
        // The loader leaves `window` 0 when the fields do not fit in one
        // read: the program is not attached then, but stay safe.
        if d.window == 0 {
            return None;
        }
        // Helper call 1: the buffer's head fields, in one read.
        let Some(words) =
            read::read_bytes::<[u64; SKB_WINDOW_BYTES / 8]>(skb + u64::from(d.window))
        else {
            odd::oddity(oddity::DROP_READ, skb);
            return None;
        };
        let window = Window(words);
        let protocol = window.get::<u16>(d.protocol, d.window);
        if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
            return None;
        }
        let network = window.get::<u16>(o.network_header, d.window);
        let head = window.get::<u64>(o.head, d.window);
        if network == NO_HEADER || head == 0 {
            return None;
        }
        let ip = head + u64::from(network);
        // Helper call 2: the IP header and, for IPv6 or an IPv4 header
        // without options, the TCP header after it.
        let Some(h) = read::read_bytes::<[u32; HEADERS_BYTES / 4]>(ip) else {
            odd::oddity(oddity::DROP_READ, skb);
            return None;
        };
        let version = (h[0] & 0xf0) >> 4;
        // Little-endian words: IPv4's protocol is byte 9, IPv6's next
        // header byte 6.
        let (ip_len, tcp, family, saddr, daddr) =
            if version == 4 && (h[2] >> 8) & 0xff == u32::from(IPPROTO_TCP) {
                let ihl = h[0] & 0x0f;
                let ip_len = ihl * 4;
                let tcp = if ihl == 5 {
                    [h[5], h[6], h[7], h[8]]
                } else if ihl > 5 {
                    // IP options (rare): one more read, where the TCP header is.
                    read::read_bytes::<[u32; 4]>(ip + u64::from(ip_len))?
                } else {
                    return None;
                };
                (ip_len, tcp, AF_INET, [h[3], 0, 0, 0], [h[4], 0, 0, 0])
            } else if version == 6 && (h[1] >> 16) & 0xff == u32::from(IPPROTO_TCP) {
                // Extension headers before TCP are not followed: such a
                // segment is left out.
                let tcp = [h[10], h[11], h[12], h[13]];
                (
                    40,
                    tcp,
                    AF_INET6,
                    [h[2], h[3], h[4], h[5]],
                    [h[6], h[7], h[8], h[9]],
                )
            } else {
                return None;
            };
        // Only bytes the buffer holds (its linear part ends at `tail`):
        // past it the flags would be whatever memory follows.
        let tail = window.get::<u32>(d.tail, d.window);
        if d.tail != 0 && u32::from(network) + ip_len + 14 > tail {
            return None;
        }
        let flags = ((tcp[3] >> 8) & 0xff) as u8;
        let matters = flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0;
        if !matters && reason != cfg.drop.codes.listen_overflow {
            return None;
        }
        Some(Segment {
            skb,
            family,
            // Source port in the low half of word 0 (network order).
            sport: u16::from_be(tcp[0] as u16),
            dport: u16::from_be((tcp[0] >> 16) as u16),
            flags,
            saddr,
            daddr,
        })
    }
}

/// A copy of `struct sk_buff`'s head fields; offsets are the buffer's own.
struct Window([u64; SKB_WINDOW_BYTES / 8]);

impl Window {
    /// The field at buffer offset `offset` (the loader checked that it lies
    /// inside the window, aligned to its size).
    #[inline(always)]
    fn get<T: Copy + Default>(&self, offset: u16, window: u16) -> T {
        let at = usize::from(offset.wrapping_sub(window));
        if at + size_of::<T>() > SKB_WINDOW_BYTES {
            return T::default();
        }
        // SAFETY: in bounds (checked above) and aligned (checked by the loader).
        unsafe { core::ptr::read(self.0.as_ptr().cast::<u8>().add(at).cast::<T>()) }
    }
}

/// The user's port and family filters, with either end of the segment as
/// the local one: a segment's source is local when it is sent, its
/// destination when it is received, and the program cannot tell which.
#[inline(always)]
fn endpoints_pass(s: &Segment, cfg: &Config) -> bool {
    let f = &cfg.filter;
    if f.flags & filter::FAMILY != 0 && s.family != f.family {
        return false;
    }
    if f.flags & filter::PORT != 0 && s.sport != f.port && s.dport != f.port {
        return false;
    }
    let as_local = |local: u16, remote: u16| {
        (f.flags & filter::LPORT == 0 || local == f.lport)
            && (f.flags & filter::RPORT == 0 || remote == f.rport)
    };
    as_local(s.sport, s.dport) || as_local(s.dport, s.sport)
}

/// A TIME_WAIT mini-socket (FIN_WAIT2 ones are TIME_WAIT sockets too)
/// frees every segment it handled, the peer's FIN it acknowledged
/// included, with `NOT_SPECIFIED`: that is the end of a close, not a loss
/// (a FIN is still reported, marked: it tells that the peer did close).
/// One read of the matched socket's state, only for such drops.
#[inline(always)]
fn handled_by_time_wait(rx_sk: u64, cfg: &Config) -> bool {
    let state = cfg.sock.state;
    state != tcptrace_common::ABSENT
        && read_kernel::<u8>(rx_sk + u64::from(state))
            == Some(tcptrace_common::tcp_state::TIME_WAIT)
}

/// The network namespace of the socket the segment belongs to, or of the
/// device it passed, for the `--netns` filter only (two or three reads).
#[inline(always)]
fn netns_of(sock: u64, skb: u64, cfg: &Config) -> u32 {
    let (o, s) = (&cfg.sock, &cfg.drop.skb);
    let net = if sock != 0 && o.net != tcptrace_common::ABSENT {
        read_kernel::<u64>(sock + u64::from(o.net))
    } else if s.dev != 0 && s.nd_net != 0 {
        read_kernel::<u64>(skb + u64::from(s.dev))
            .filter(|&dev| dev != 0)
            .and_then(|dev| read_kernel::<u64>(dev + u64::from(s.nd_net)))
    } else {
        None
    };
    match net {
        Some(net) if net != 0 && o.net_inum != 0 => {
            read_kernel::<u32>(net + u64::from(o.net_inum)).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Builds, filters and submits the event of a segment that matters.
#[inline(always)]
fn segment_event(s: &Segment, args: &Args, reason: u32, cfg: &Config) {
    if !endpoints_pass(s, cfg) {
        count(counter::FILTERED);
        return;
    }
    let rx_sk = args.get(cfg.drop.args.sk);
    let time_wait =
        reason == cfg.drop.codes.not_specified && rx_sk != 0 && handled_by_time_wait(rx_sk, cfg);
    if time_wait && s.flags & TCP_FIN == 0 {
        // Not a drop, like QUEUE_PURGE, and nothing to tell.
        return;
    }
    // Helper call 3: the socket still owning the buffer, the one that sent
    // it (or the receiver early demux found): the only exact tie of a
    // segment dropped on its way out to its socket.
    let owner_sk = if cfg.drop.skb.sk != 0 {
        read_kernel::<u64>(s.skb + u64::from(cfg.drop.skb.sk)).unwrap_or(0)
    } else {
        0
    };
    let netns = if cfg.filter.flags & filter::NETNS != 0 {
        let ns = netns_of(if rx_sk != 0 { rx_sk } else { owner_sk }, s.skb, cfg);
        if ns != cfg.filter.netns {
            count(counter::FILTERED);
            return;
        }
        ns
    } else {
        0
    };
    // Helper calls 4 and 5 (time; pid, outside softirq), in new_event.
    let mut slot = MaybeUninit::uninit();
    let event = new_event(&mut slot, kind::DROP, rx_sk);
    event.family = s.family;
    event.sport = s.sport;
    event.dport = s.dport;
    event.seg_flags = u16::from(s.flags);
    put_words(&mut event.saddr, s.saddr);
    put_words(&mut event.daddr, s.daddr);
    event.value = reason;
    if time_wait {
        // Not a loss: the peer's FIN, answered by the mini-socket a
        // closed socket of ours was handed to. Userspace tells it so.
        event.newstate = tcptrace_common::tcp_state::TIME_WAIT;
    }
    event.aux = owner_sk;
    event.netns = netns;
    attach_socket_owner(event, if rx_sk != 0 { rx_sk } else { owner_sk });
    if process_passes(event) {
        submit(event);
    } else {
        count(counter::FILTERED);
    }
}

/// The owner of the socket the segment belongs to, for the process
/// filters and the stream view (a hash lookup, inlined: no helper call).
#[inline(always)]
fn attach_socket_owner(event: &mut Event, sk: u64) {
    // Without process filters userspace keeps the owner maps.
    if sk == 0 || !crate::config().filter.judges_owners() {
        return;
    }
    // SAFETY: read-only lookup; the value is copied out at once.
    if let Some(owner) = unsafe { OWNERS.get(sk) } {
        copy_task(owner, &mut event.owner);
        event.flags |= flag::OWNER_KNOWN;
    }
}

/// Stores an address as four 4-byte words (a `[u8; 16]` assignment would
/// be a byte loop).
#[inline(always)]
fn put_words(dst: &mut [u8; 16], words: [u32; 4]) {
    // SAFETY: Event's address arrays sit at 8-byte-aligned offsets of an
    // 8-byte-aligned struct; same size, every bit pattern valid.
    unsafe { core::ptr::from_mut(dst).cast::<[u32; 4]>().write(words) };
}
