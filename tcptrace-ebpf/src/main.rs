//! tcptrace's kernel side: small and dumb on purpose.
//!
//! Raw tracepoint programs: the kernel hands each one the tracepoint's own
//! arguments (`struct sock *`, states, ...), so it pays for no trace-record
//! formatting, and each program has its own recursion guard instead of the
//! one every classic tracepoint program on a CPU shares. Each program reads
//! the fields it needs from the kernel's structs at offsets the loader took
//! from the running kernel's BTF ([`CONFIG`]), applies the user's filters and
//! submits one [`Event`]. All interpretation happens in userspace.
//!
//! Cost discipline (every helper call is a retpoline and an SRSO-safe return
//! on these machines): no struct is zeroed or copied with `memset`/`memcpy`
//! (aya's fallbacks are byte loops; `cargo xtask test` checks the object has
//! none), and each helper call below says why it is there.
// Host builds (clippy, check) see an ordinary binary; the real one is built
// for bpfel-unknown-none by tcptrace's build.rs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target's core has no atomic types: `count` uses the intrinsic.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod accept;
mod context;
mod drops;
mod odd;
mod owners;
mod procs;
mod read;
mod ring;
mod tcp;

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use tcptrace_common::{
    ABSENT, AF_INET6, ArgPos, Config, Event, IPPROTO_TCP, ListenerKey, Task, counter, filter, flag,
    kind, more_flags, oddity, tcp_state,
};

use core::{mem::MaybeUninit, ptr::addr_of_mut};

use crate::{
    owners::{attach_owner, copy_task, forget_owner, track_owner},
    read::{SockFields, SockHead, with_sock_head},
    ring::submit,
};

/// Filled in by the loader (`EbpfLoader::set_global`) before loading.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::EMPTY;

/// `counter::*` per CPU (events produced are the rings' reserved slots plus
/// those lost): produced = received + lost holds exactly.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Owner of each socket, captured in process context at connect and listen,
/// forgotten at its destroy.
/// This and the two maps below are used only under process filters (see
/// [`tcptrace_common::Filter::judges_owners`]); otherwise userspace keeps
/// owners, and the verifier prunes every access to them.
#[map]
static OWNERS: LruHashMap<u64, Task> = LruHashMap::with_max_entries(65536, 0);

/// Owner of each listening socket, by namespace, family, port and bound
/// address, inherited by the children the listener accepts. Seeded by the
/// loader with the listeners that existed before tcptrace started.
#[map]
static LISTENERS: LruHashMap<ListenerKey, Task> = LruHashMap::with_max_entries(8192, 0);

/// Owners of the sockets that existed when tcptrace started, by socket
/// cookie (the kernel's socket diagnostics assign one to every socket they
/// list): filled by the loader, moved into OWNERS at a socket's first event.
#[map]
static SNAPSHOT_OWNERS: HashMap<u64, Task> = HashMap::with_max_entries(65536, 0);

/// Process ids (tgids) to trace when `filter::PID` is on.
#[map]
static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Most `inet_sock_set_state` runs one CPU can have begun and not yet seen
/// through to their backup's run: a firing nests only under an interrupt.
const MAX_CLAIMS: usize = 4;

/// Per CPU: the sockets whose `inet_sock_set_state` run has begun and whose
/// backup (`inet_sock_set_state_nested`) has not run yet, innermost last.
#[repr(C)]
pub struct Claims {
    depth: u64,
    sk: [u64; MAX_CLAIMS],
}

#[map]
static SET_STATE_CLAIMS: PerCpuArray<Claims> = PerCpuArray::with_max_entries(1, 0);

/// The `skc_prot` of TCP sockets, IPv4's and IPv6's (`tcp_prot`,
/// `tcpv6_prot`), learnt from sockets whose `sk_protocol` read as TCP (see
/// [`is_tcp`]). Written only with values checked that way.
#[map]
static TCP_PROTS: Array<u64> = Array::with_max_entries(2, 0);

#[inline(always)]
fn config() -> &'static Config {
    // SAFETY: CONFIG is written once by the loader before load; the volatile
    // read stops the compiler from folding the defaults in. The map is
    // frozen read-only, so the verifier still sees every value as a constant.
    unsafe { core::ptr::read_volatile(&&CONFIG) }
}

#[inline(always)]
pub(crate) fn count(index: u32) {
    // Array lookups are inlined by the verifier: no helper call.
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Atomic although the slot is this CPU's: a softirq can run another
        // program on this CPU between a plain load and store, and one of the
        // two counts would be lost (seen: received exceeded produced by the
        // resets a loopback softirq sent meanwhile). One locked add.
        // SAFETY: a valid, 8-byte-aligned per-CPU slot.
        unsafe { add_atomically(slot) };
    }
}

/// `*slot += 1` as one BPF atomic add (`lock xadd` once JIT-compiled).
///
/// # Safety
/// `slot` is valid and 8-byte aligned.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn add_atomically(slot: *mut u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
}

/// Host builds (clippy, check) only type-check the kernel program.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn add_atomically(slot: *mut u64) {
    // SAFETY: as the caller promises.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(slot) }
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// A raw tracepoint's arguments, copied with constant-offset loads (the
/// verifier refuses a context load at a computed offset). Loads past the
/// tracepoint's own count (`nargs`, from BTF) are never made: the verifier
/// sees `nargs` as a constant and drops them, and the kernel refuses to
/// attach a program that reads past the last argument. Five values, not
/// an array: picked by a `match`, they stay in registers, where an array
/// indexed by a position would take 40 bytes of the 512-byte stack.
struct Args(u64, u64, u64, u64, u64);

impl Args {
    #[inline(always)]
    fn of(ctx: &RawTracePointContext, pos: &ArgPos) -> Args {
        let n = pos.nargs as usize;
        let at = |i: usize| if i < n { ctx.arg::<u64>(i) } else { 0 };
        Args(at(0), at(1), at(2), at(3), at(4))
    }

    /// Argument `index` (a position from BTF, also a constant to the
    /// verifier), or 0 for [`NO_ARG`].
    #[inline(always)]
    fn get(&self, index: u8) -> u64 {
        match index {
            0 => self.0,
            1 => self.1,
            2 => self.2,
            3 => self.3,
            4 => self.4,
            _ => 0,
        }
    }
}

/// Does a task pass the user's process filters?
#[inline(always)]
fn task_matches(f: &tcptrace_common::Filter, task: &Task) -> bool {
    // SAFETY: read-only lookup of a plain value.
    if f.flags & filter::PID != 0 && unsafe { PID_FILTER.get(task.tgid) }.is_none() {
        return false;
    }
    if f.flags & filter::COMM != 0 && task.comm != f.comm {
        return false;
    }
    if f.flags & filter::CGROUP != 0 && task.cgroup_id != f.cgroup_id {
        return false;
    }
    true
}

/// The cgroup id, read only when the cgroup filter or an owner needs it.
#[inline(always)]
fn cgroup_id() -> u64 {
    // SAFETY: plain helper call, valid in tracing programs.
    unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() }
}

/// Family and port filters (the verifier drops this whole function when no
/// filter is on: the flags are constants to it).
#[inline(always)]
fn endpoints_pass(e: &Event) -> bool {
    let f = &config().filter;
    if f.flags & filter::NETNS != 0 && e.netns != f.netns {
        return false;
    }
    if f.flags & filter::FAMILY != 0 && e.family != f.family {
        return false;
    }
    if f.flags & filter::PORT != 0 && e.sport != f.port && e.dport != f.port {
        return false;
    }
    if f.flags & filter::LPORT != 0 && e.sport != f.lport {
        return false;
    }
    if f.flags & filter::RPORT != 0 && e.dport != f.rport {
        return false;
    }
    true
}

/// Process filters judge the socket's owner when it is known; otherwise the
/// task that caused the event, when it ran in process context.
#[inline(always)]
fn process_passes(e: &mut Event) -> bool {
    let f = &config().filter;
    if !f.judges_owners() {
        return true;
    }
    if e.flags & flag::OWNER_KNOWN != 0 {
        return task_matches(f, &e.owner);
    }
    if e.more_flags & more_flags::SHARED_LISTENER != 0 {
        // One of several processes will accept it: userspace judges the
        // socket once its acceptor is known.
        return true;
    }
    if e.flags & flag::SOFTIRQ != 0 {
        return false;
    }
    if f.flags & filter::CGROUP != 0 && e.context.cgroup_id == 0 {
        e.context.cgroup_id = cgroup_id();
    }
    task_matches(f, &e.context)
}

/// An event with its common part filled in and the rest zero, built in
/// the caller's stack slot and never moved: field by field, byte arrays as
/// 8-byte words. A struct literal's `[0; 16]`, `..Default::default()` or a
/// returned-by-value Event compiles to a byte-loop memset or memcpy.
///
/// Helper calls: `bpf_ktime_get_ns` (the event's time: nothing else gives
/// it). Who is on the CPU (not in softirq, where that task is a bystander)
/// and its name (only for state changes, resets sent, exits, signals and
/// accepts: those name who connected, listened, closed, aborted or killed;
/// for resets received, retransmits and destroys the context's name is
/// never shown) are loads from the task where the kernel allows them, and
/// otherwise `bpf_get_current_pid_tgid` and `bpf_get_current_comm`
/// ([`context::on_cpu_into`]).
#[inline(always)]
fn new_event(slot: &mut MaybeUninit<Event>, event_kind: u8, skaddr: u64) -> &mut Event {
    // A syscall's return and a task's exit run in process context: no read.
    let softirq = !matches!(event_kind, kind::ACCEPT | kind::PROCESS_EXIT) && context::in_softirq();
    let e = slot.as_mut_ptr();
    // SAFETY: every field of the #[repr(C)] Event (which has no padding) is
    // written below before assume_init; the casts keep 8-byte alignment.
    unsafe {
        addr_of_mut!((*e).ts_ns).write(bpf_ktime_get_ns());
        addr_of_mut!((*e).skaddr).write(skaddr);
        // kind, oldstate, newstate, flags: one 4-byte store.
        let flags = if softirq { flag::SOFTIRQ } else { 0 };
        addr_of_mut!((*e).kind)
            .cast::<u32>()
            .write(u32::from_le_bytes([event_kind, 0, 0, flags]));
        // Inlined by the verifier on x86-64: no helper call.
        addr_of_mut!((*e).cpu).write(aya_ebpf::helpers::bpf_get_smp_processor_id());
        // family, sport, dport, seg_flags.
        zero8(addr_of_mut!((*e).family).cast());
        zero16(addr_of_mut!((*e).saddr));
        zero16(addr_of_mut!((*e).daddr));
        // value, unread.
        zero8(addr_of_mut!((*e).value).cast());
        zero8(addr_of_mut!((*e).aux));
        let context = addr_of_mut!((*e).context);
        // Without filters a destroy's context is never looked at.
        let bare_destroy = event_kind == kind::DESTROY_SOCK && config().filter.flags == 0;
        let names_someone = matches!(
            event_kind,
            kind::STATE | kind::SEND_RESET | kind::PROCESS_EXIT | kind::SIGNAL | kind::ACCEPT
        );
        // A bystander's ids and name are not worth reading.
        context::on_cpu_into(
            context,
            !softirq && !bare_destroy,
            !softirq && names_someone,
        );
        // Filled in only where needed (owners, the cgroup filter).
        zero8(addr_of_mut!((*context).cgroup_id));
        let owner = addr_of_mut!((*e).owner);
        zero8(addr_of_mut!((*owner).pid).cast());
        zero8(addr_of_mut!((*owner).cgroup_id));
        zero16(addr_of_mut!((*owner).comm));
        // netns, more_flags.
        zero8(addr_of_mut!((*e).netns).cast());
        slot.assume_init_mut()
    }
}

/// Zeroes 8 bytes with one store. Volatile, so that LLVM cannot merge
/// neighbouring zero stores into a `memset` call: the BPF backend has no
/// inline memset, and the fallback is a byte loop.
///
/// # Safety
/// `dst` is valid for writes and 8-byte aligned.
#[inline(always)]
unsafe fn zero8(dst: *mut u64) {
    unsafe { dst.write_volatile(0) };
}

/// Zeroes a 16-byte array with two 8-byte stores.
///
/// # Safety
/// `dst` is valid for writes and 8-byte aligned (every such array in
/// [`Event`] and [`Task`] is).
#[inline(always)]
unsafe fn zero16(dst: *mut [u8; 16]) {
    let words = dst.cast::<u64>();
    unsafe {
        zero8(words);
        zero8(words.add(1));
    }
}

/// Bytes received but not yet read: `rcv_nxt - copied_seq` of the tcp_sock.
/// Two reads, only on a transition to CLOSE (the one place it matters).
#[inline(always)]
fn read_unread<F: SockFields>(head: &SockHead<F>, event: &mut Event) {
    let o = &config().sock;
    if o.tcp_rcv_nxt == 0 || o.tcp_copied_seq == 0 {
        return;
    }
    let rcv_nxt = head.far::<u32>(o.tcp_rcv_nxt);
    let copied = head.far::<u32>(o.tcp_copied_seq);
    if let (Some(rcv_nxt), Some(copied)) = (rcv_nxt, copied) {
        event.unread = rcv_nxt.wrapping_sub(copied);
        event.flags |= flag::UNREAD_VALID;
    } else {
        odd::oddity(oddity::UNREAD_READ, event.skaddr);
    }
}

/// Filters and submits a socket event.
#[inline(always)]
fn finish_sock_event(event: &mut Event) {
    if endpoints_pass(event) && process_passes(event) {
        submit(event);
    } else {
        count(counter::FILTERED);
    }
}

/// `inet_sock_set_state(sk, oldstate, newstate)`: the hot path. Its first
/// act claims the firing for its backup (below) to see.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let pos = &config().set_state;
    let args = Args::of(&ctx, pos);
    let sk = args.get(pos.sk);
    claim(sk);
    set_state_event(&args, sk);
    0
}

/// The same tracepoint, attached after the program above (programs on one
/// tracepoint run in attach order), for the one event that program cannot
/// see: when an interrupt on this CPU lands while `inet_sock_set_state`
/// runs and its softirq changes another socket's state (a peer on
/// loopback, during a mass close), the kernel skips the nested run of that
/// program (its recursion guard). This one finds no claim for the nested
/// firing's socket and makes the event; for every other firing it finds
/// the claim, drops it and returns. A claim, not a "running" flag: the
/// kernel's guard also covers the moments before a program's first
/// instruction and after its last (its statistics' clock reads among
/// them), where a flag would not yet, or no longer, be set (seen: 334 of
/// 890 skipped runs in a mass close went unrecovered). Its events are
/// counted, so that skipped runs it made up for are not reported as lost.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: RawTracePointContext) -> i32 {
    let pos = &config().set_state;
    let args = Args::of(&ctx, pos);
    let sk = args.get(pos.sk);
    if !unclaim(sk) {
        count(counter::RECOVERED);
        set_state_event(&args, sk);
    }
    0
}

/// Records that `sk`'s firing reached `inet_sock_set_state`. Only a backup
/// that was itself skipped (a third nesting level) leaves a claim behind;
/// should such leftovers fill the stack, it starts again (an outer firing
/// still open then has its event made twice, the second counted as
/// recovered: rarer than the third-level skip that began it).
#[inline(always)]
fn claim(sk: u64) {
    let Some(claims) = SET_STATE_CLAIMS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot; a nested run on this CPU finishes (pushes and
    // pops its own claim) before this one continues.
    unsafe {
        let mut depth = (*claims).depth as usize;
        if depth >= MAX_CLAIMS {
            depth = 0;
        }
        (*claims).sk[depth] = sk;
        (*claims).depth = depth as u64 + 1;
    }
}

/// Did `inet_sock_set_state` claim `sk`'s firing? Then the claim, and any
/// left above it by a skipped backup, are dropped. Innermost first.
#[inline(always)]
fn unclaim(sk: u64) -> bool {
    let Some(claims) = SET_STATE_CLAIMS.get_ptr_mut(0) else {
        // No map slot: never make an event twice.
        return true;
    };
    // SAFETY: as in `claim`.
    unsafe {
        let depth = (*claims).depth as usize;
        let mut i = MAX_CLAIMS;
        while i > 0 {
            i -= 1;
            if i < depth && (*claims).sk[i] == sk {
                (*claims).depth = i as u64;
                return true;
            }
        }
    }
    false
}

/// Is the socket at `sk` TCP (MPTCP and SCTP fire `inet_sock_set_state`
/// too)? Its `skc_prot`, in the head already read, is compared with the
/// values TCP sockets were seen to have: an array lookup the verifier
/// inlines, where reading `sk_protocol` is a helper call. Only a socket
/// whose `skc_prot` is not known yet (the first TCP socket of each family,
/// and every non-TCP one) costs that read. `None`: unreadable.
#[inline(always)]
pub(crate) fn is_tcp<F: SockFields>(head: &SockHead<F>) -> Option<bool> {
    let o = &config().sock;
    let slot = u32::from(head.family() == AF_INET6);
    let prot = if o.prot != ABSENT { head.prot() } else { 0 };
    if prot != 0 && TCP_PROTS.get(slot).is_some_and(|&known| known == prot) {
        return Some(true);
    }
    if o.protocol == ABSENT {
        // A bitfield before Linux 5.6: not checked, as the tracepoint
        // itself did not before 5.6.
        return Some(true);
    }
    let protocol = head.far::<u16>(u32::from(o.protocol))?;
    if protocol == IPPROTO_TCP
        && prot != 0
        && let Some(known) = TCP_PROTS.get_ptr_mut(slot)
    {
        // SAFETY: an array slot; a racing CPU writes the same value.
        unsafe { *known = prot };
    }
    Some(protocol == IPPROTO_TCP)
}

/// Reads the socket at `sk` (see [`with_sock_head`]) and makes its event.
#[inline(always)]
fn set_state_event(args: &Args, sk: u64) {
    with_sock_head!(sk, |head| set_state_event_from(args, sk, head), else {
        odd::oddity(oddity::SET_STATE_SOCK, sk)
    })
}

/// Helper calls, where reads are not loads: one read of the socket's head
/// (tuple, family, proto), the event's common part, an owner lookup, the
/// output; two more reads on CLOSE. `sk_protocol` is read only for sockets
/// [`is_tcp`] does not know.
#[inline(always)]
fn set_state_event_from<F: SockFields>(args: &Args, sk: u64, head: SockHead<F>) {
    let pos = &config().set_state;
    match is_tcp(&head) {
        Some(true) => {}
        Some(false) => {
            count(counter::NOT_TCP);
            return;
        }
        None => {
            odd::oddity(oddity::SET_STATE_SOCK, sk);
            return;
        }
    }
    let o = &config().sock;
    let mut slot = MaybeUninit::uninit();
    let event = new_event(&mut slot, kind::STATE, sk);
    event.oldstate = args.get(pos.int0) as u8;
    event.newstate = args.get(pos.int1) as u8;
    head.fill_endpoints(event);
    event.aux = head.cookie();
    let starts = event.oldstate == tcp_state::CLOSE || event.oldstate == tcp_state::LISTEN;
    if starts || config().filter.flags & filter::NETNS != 0 {
        // Where a life starts (connect, listen, a listener's child) and for
        // the netns filter: one more read. Userspace keeps it for the life.
        event.netns = head.netns();
    }
    track_owner(event);
    if event.newstate == tcp_state::CLOSE {
        read_unread(&head, event);
        if event.oldstate == tcp_state::FIN_WAIT2 && o.flags != ABSENT && o.done_bit < 64 {
            // Did the peer's FIN come (SOCK_DONE, set as it arrives), or is
            // this the orphan handed to a FIN_WAIT2 mini-socket while the
            // peer keeps its end open? From the head already read.
            event.seg_flags = ((head.sk_flags() >> o.done_bit) & 1) as u16;
            event.flags |= flag::SHUTDOWN_VALID;
        }
    }
    finish_sock_event(event);
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("tcptrace-ebpf is a kernel program: tcptrace's build.rs builds it for BPF");
    std::process::exit(1);
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
