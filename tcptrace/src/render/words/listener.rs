//! A listener's counted lines: the handshakes it failed, in words.

use super::push_u64;

/// `3 SYN/ACK retransmits (handshakes not completed at the first one)`.
pub fn synack_retransmits_into(out: &mut String, n: u32) {
    push_u64(out, u64::from(n));
    out.push_str(if n == 1 {
        " SYN/ACK retransmit (a handshake not completed at the first SYN/ACK)"
    } else {
        " SYN/ACK retransmits (handshakes not completed at the first SYN/ACK)"
    });
}

/// `2 handshakes expired on this listener (…)`.
pub fn requests_expired_into(out: &mut String, n: u32) {
    push_u64(out, u64::from(n));
    out.push_str(if n == 1 {
        " handshake expired on this listener (its SYN/ACK retransmits ran out unanswered)"
    } else {
        " handshakes expired on this listener (their SYN/ACK retransmits ran out unanswered)"
    });
}
