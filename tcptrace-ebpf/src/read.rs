//! Reads from kernel memory at offsets the loader took from BTF.
//!
//! Where the kernel allows it ([`tcptrace_common::ReadConfig`]), a read is
//! a plain load through a pointer cast by `bpf_rdonly_cast`: the JIT makes
//! it a probe load (a bad address reads as zero) and the cast a register
//! move, so a field costs one instruction. Elsewhere each read is one
//! `bpf_probe_read_kernel` helper call into uninitialised stack memory
//! (nothing is zeroed first), and fields are then plain loads.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use tcptrace_common::{
    AF_INET, AF_INET6, COMM_LEN, Event, RDONLY_CAST_MARKER, SOCK_HEAD_BYTES, TaskOffsets, flag,
    kind, oddity, tcp_state,
};

use crate::{config, odd};

/// Are reads plain loads? A constant to the verifier, which drops the
/// other branch of every read.
#[inline(always)]
pub fn direct() -> bool {
    config().reads.direct != 0
}

/// `addr` as a pointer the verifier lets the program load from: a call
/// of `bpf_rdonly_cast(addr, 0)` once the loader has rewritten it, which
/// the verifier then turns into a register move.
#[inline(always)]
fn rdonly_cast(addr: u64) -> *const u8 {
    // SAFETY: the loader rewrites every call to this helper id into the
    // kfunc's before load (or, where the kfunc is missing, into a helper
    // no path with `direct` 0 reaches).
    unsafe {
        let cast: unsafe extern "C" fn(u64, u64) -> *const u8 =
            core::mem::transmute(RDONLY_CAST_MARKER as usize);
        cast(addr, 0)
    }
}

/// The values a direct read loads with one instruction.
pub trait Scalar: Copy + Default {}
impl Scalar for u8 {}
impl Scalar for u16 {}
impl Scalar for u32 {}
impl Scalar for u64 {}
impl Scalar for i32 {}
impl Scalar for i64 {}

/// One value of type `T` at kernel address `addr`. A direct read cannot
/// fail: a bad address reads as zero, which callers treat as "unknown".
#[inline(always)]
pub fn read_kernel<T: Scalar>(addr: u64) -> Option<T> {
    if direct() {
        // SAFETY: a probe load (see above); volatile, so that it stays one
        // load of exactly this size.
        return Some(unsafe { core::ptr::read_volatile(rdonly_cast(addr).cast::<T>()) });
    }
    read_bytes(addr)
}

/// A value of any plain type (byte arrays, header windows) at `addr`: one
/// helper call, on the rare paths that read more than a word at once.
#[inline(always)]
pub fn read_bytes<T>(addr: u64) -> Option<T> {
    // SAFETY: the helper checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// The on-CPU task's name, written by the helper straight into `dst` (an
/// `[u8; 16]` return value would be copied byte by byte).
///
/// # Safety
/// `dst` is valid for writes.
#[inline(always)]
pub unsafe fn current_comm_into(dst: *mut [u8; COMM_LEN]) {
    // SAFETY: the helper writes exactly COMM_LEN bytes (NUL-padded), or
    // zeroes them on failure.
    unsafe { generated::bpf_get_current_comm(dst.cast(), COMM_LEN as u32) };
}

/// How a socket's fields are read: [`Loaded`] or [`Copied`].
pub trait SockFields {
    /// The field at `offset` in the head (from BTF, aligned to `T` by the
    /// loader; the caller checks it lies in the head).
    fn head<T: Scalar>(&self, offset: usize) -> T;
    /// A field beyond the head of the socket at `sk`: `None` when it
    /// cannot be read.
    fn far<T: Scalar>(&self, sk: u64, offset: u32) -> Option<T>;
}

/// Direct reads: the socket itself, cast once for every load (the cast is
/// a register move once verified). No helper call, and nothing copied to
/// the stack.
pub struct Loaded {
    base: *const u8,
}

impl SockFields for Loaded {
    #[inline(always)]
    fn head<T: Scalar>(&self, offset: usize) -> T {
        // SAFETY: a probe load through the cast socket pointer.
        unsafe { core::ptr::read_volatile(self.base.add(offset).cast::<T>()) }
    }

    #[inline(always)]
    fn far<T: Scalar>(&self, _sk: u64, offset: u32) -> Option<T> {
        Some(self.head(offset as usize))
    }
}

/// Helper reads: the head copied to the stack by one call, fields beyond
/// it one call each.
pub struct Copied {
    words: [u64; SOCK_HEAD_BYTES / 8],
}

impl SockFields for Copied {
    #[inline(always)]
    fn head<T: Scalar>(&self, offset: usize) -> T {
        // SAFETY: the copy was fully written by the successful read; the
        // caller keeps `offset` in bounds, the loader aligned.
        unsafe { core::ptr::read(self.words.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
    }

    #[inline(always)]
    fn far<T: Scalar>(&self, sk: u64, offset: u32) -> Option<T> {
        read_bytes(sk + u64::from(offset))
    }
}

/// The head of a `struct sock_common` (tuple, family, state and cookie)
/// and the socket's other fields, read the way this kernel allows. The
/// two ways are two types, not a branch inside one: the helper's stack
/// copy would otherwise take 104 of the state program's 512 stack bytes
/// on kernels that never make it ([`with_sock_head`]).
pub struct SockHead<F> {
    sk: u64,
    fields: F,
}

impl SockHead<Loaded> {
    #[inline(always)]
    pub fn load(sk: u64) -> SockHead<Loaded> {
        SockHead {
            sk,
            fields: Loaded {
                base: rdonly_cast(sk),
            },
        }
    }
}

impl SockHead<Copied> {
    /// One helper call for every field of the head; `None` if it fails.
    #[inline(always)]
    pub fn copy(sk: u64) -> Option<SockHead<Copied>> {
        let mut words = MaybeUninit::<[u64; SOCK_HEAD_BYTES / 8]>::uninit();
        // SAFETY: the helper checks `sk` and writes SOCK_HEAD_BYTES bytes of
        // our stack, or fails (then nothing is read from it).
        let rc = unsafe {
            generated::bpf_probe_read_kernel(
                words.as_mut_ptr().cast(),
                SOCK_HEAD_BYTES as u32,
                sk as *const core::ffi::c_void,
            )
        };
        // SAFETY: fully written by the successful read.
        (rc == 0).then(|| SockHead {
            sk,
            fields: Copied {
                words: unsafe { words.assume_init() },
            },
        })
    }
}

/// Runs `$body` with `$head` bound to the head of the socket at `$sk`,
/// read the way this kernel allows (the body is compiled once for each
/// way, and the verifier keeps the one this kernel takes), or `$failed`
/// when the helper cannot read it.
macro_rules! with_sock_head {
    ($sk:expr, |$head:ident| $body:expr, else $failed:expr) => {{
        let sk = $sk;
        if $crate::read::direct() {
            let $head = $crate::read::SockHead::load(sk);
            $body
        } else {
            match $crate::read::SockHead::copy(sk) {
                Some($head) => $body,
                None => $failed,
            }
        }
    }};
}
pub(crate) use with_sock_head;

impl<F: SockFields> SockHead<F> {
    /// The field at `offset` (from BTF, aligned to `T` by the loader), or
    /// zero for a field outside the head ([`tcptrace_common::ABSENT`]).
    #[inline(always)]
    fn get<T: Scalar>(&self, offset: u16) -> T {
        let offset = usize::from(offset);
        if offset + size_of::<T>() > SOCK_HEAD_BYTES {
            return T::default();
        }
        self.fields.head(offset)
    }

    /// A field of the socket beyond its head (`offset` from BTF): a load
    /// with direct reads, else one more helper call.
    #[inline(always)]
    pub fn far<T: Scalar>(&self, offset: u32) -> Option<T> {
        self.fields.far(self.sk, offset)
    }

    /// A 16-byte address at `offset`, as four words.
    #[inline(always)]
    fn get_words(&self, offset: u16) -> [u32; 4] {
        if offset == tcptrace_common::ABSENT {
            return [0; 4];
        }
        [
            self.get::<u32>(offset),
            self.get::<u32>(offset.wrapping_add(4)),
            self.get::<u32>(offset.wrapping_add(8)),
            self.get::<u32>(offset.wrapping_add(12)),
        ]
    }

    #[inline(always)]
    pub fn state(&self) -> u8 {
        self.get::<u8>(config().sock.state)
    }

    /// `skc_flags` (the socket's `sk_flags`).
    #[inline(always)]
    pub fn sk_flags(&self) -> u64 {
        self.get::<u64>(config().sock.flags)
    }

    /// `skc_prot`: the socket's `struct proto` (0 when unknown).
    #[inline(always)]
    pub fn prot(&self) -> u64 {
        self.get::<u64>(config().sock.prot)
    }

    #[inline(always)]
    pub fn family(&self) -> u16 {
        self.get::<u16>(config().sock.family)
    }

    #[inline(always)]
    pub fn cookie(&self) -> u64 {
        self.get::<u64>(config().sock.cookie)
    }

    /// The network namespace's inode number: `skc_net->ns.inum` (one read;
    /// 0 when unknown).
    #[inline(always)]
    pub fn netns(&self) -> u32 {
        let o = &config().sock;
        let net = self.get::<u64>(o.net);
        if net == 0 || o.net_inum == 0 {
            return 0;
        }
        read_kernel::<u32>(net + u64::from(o.net_inum)).unwrap_or_else(|| {
            odd::oddity(oddity::NETNS_READ, net);
            0
        })
    }

    /// Family, ports (host order) and addresses (network order) of the
    /// socket whose head this is.
    #[inline(always)]
    pub fn fill_endpoints(&self, event: &mut Event) {
        let o = &config().sock;
        event.family = self.get::<u16>(o.family);
        event.sport = self.get::<u16>(o.num);
        // A connecting socket enters SYN_SENT before connect() picks its
        // port (tcp_v4_connect and tcp_v6_connect hash it just after): there
        // is nothing to read yet, and userspace learns it at ESTABLISHED.
        let connecting = event.kind == kind::STATE && event.newstate == tcp_state::SYN_SENT;
        if event.sport == 0 && o.inet_sport != 0 && !connecting {
            // A socket going to CLOSE has already given its port back
            // (skc_num is 0); inet_sport still names it. One more read,
            // on closes.
            match self.far::<u16>(u32::from(o.inet_sport)) {
                Some(port) => event.sport = u16::from_be(port),
                None => odd::oddity(oddity::SPORT_READ, self.sk),
            }
        }
        event.dport = u16::from_be(self.get::<u16>(o.dport));
        let (saddr, daddr) = if event.family == AF_INET6 {
            (self.get_words(o.v6_saddr), self.get_words(o.v6_daddr))
        } else {
            if event.family != AF_INET {
                odd::oddity(oddity::FAMILY, u64::from(event.family));
            }
            (
                [self.get::<u32>(o.saddr), 0, 0, 0],
                [self.get::<u32>(o.daddr), 0, 0, 0],
            )
        };
        put_addr(&mut event.saddr, saddr);
        put_addr(&mut event.daddr, daddr);
    }
}

/// Stores an address as four 4-byte words (a `[u8; 16]` assignment would
/// be a byte loop).
#[inline(always)]
fn put_addr(dst: &mut [u8; 16], words: [u32; 4]) {
    // SAFETY: Event's address arrays sit at 8-byte-aligned offsets of an
    // 8-byte-aligned struct; same size, every bit pattern valid.
    unsafe { core::ptr::from_mut(dst).cast::<[u32; 4]>().write(words) };
}

/// A reset sent without a full socket (none at all, a request or a
/// TIME_WAIT socket) takes its tuple from the segment it answers, reversed
/// so that "local" is this host, and records that segment's TCP flags: only
/// a SYN answered this way is a refused connection. Up to four reads, on a
/// rare event.
#[inline(always)]
pub fn reset_without_full_socket(skb: u64, event: &mut Event) {
    let full = event.skaddr != 0
        && event.newstate != tcp_state::TIME_WAIT
        && event.newstate != tcp_state::NEW_SYN_RECV;
    let o = &config().skb;
    if full || skb == 0 || o.head == 0 || o.data == 0 || o.network_header == 0 {
        return;
    }
    let (Some(head), Some(data), Some(network)) = (
        read_kernel::<u64>(skb + u64::from(o.head)),
        read_kernel::<u64>(skb + u64::from(o.data)),
        read_kernel::<u16>(skb + u64::from(o.network_header)),
    ) else {
        odd::oddity(oddity::SEGMENT_READ, skb);
        return;
    };
    // The TCP header's first 16 bytes: ports, sequence numbers, flags.
    let Some(tcp) = read_bytes::<[u32; 4]>(data) else {
        odd::oddity(oddity::SEGMENT_READ, skb);
        return;
    };
    let ip = head + u64::from(network);
    // The IPv6 header is the longer of the two: read its first 40 bytes
    // (an IPv4 header with options is longer than 20, never shorter).
    let Some(iph) = read_bytes::<[u32; 10]>(ip) else {
        odd::oddity(oddity::SEGMENT_READ, skb);
        return;
    };
    let version = (iph[0] & 0xf0) >> 4;
    let (local, remote) = if version == 6 {
        event.family = AF_INET6;
        (
            [iph[6], iph[7], iph[8], iph[9]],
            [iph[2], iph[3], iph[4], iph[5]],
        )
    } else if version == 4 {
        event.family = AF_INET;
        ([iph[4], 0, 0, 0], [iph[3], 0, 0, 0])
    } else {
        // Neither header: its addresses would be garbage.
        odd::oddity(oddity::SEGMENT_VERSION, u64::from(version));
        return;
    };
    put_addr(&mut event.saddr, local);
    put_addr(&mut event.daddr, remote);
    // Little-endian words: source port in the low half of word 0 (network
    // order), destination in the high half; flags are byte 13.
    event.dport = u16::from_be(tcp[0] as u16);
    event.sport = u16::from_be((tcp[0] >> 16) as u16);
    event.seg_flags = ((tcp[3] >> 8) & 0xff) as u16;
    event.flags |= flag::SEGMENT_VALID;
}

/// Does the task have a handler (or SIG_IGN) for `sig`? Then the signal
/// will not kill it. Unknown offsets or failed reads say no: report it.
#[inline(always)]
pub fn has_handler(task: u64, sig: i32, o: &TaskOffsets) -> bool {
    if o.sighand == 0 || o.sigaction_size == 0 {
        return false;
    }
    let Some(sighand) = read_kernel::<u64>(task + u64::from(o.sighand)) else {
        odd::oddity(oddity::HANDLER_READ, task);
        return false;
    };
    let slot = u64::from(o.sa_handler) + (sig as u64 - 1) * u64::from(o.sigaction_size);
    match read_kernel::<u64>(sighand + slot) {
        // SIG_DFL is 0.
        Some(handler) => handler != 0,
        None => {
            odd::oddity(oddity::HANDLER_READ, task);
            false
        }
    }
}
