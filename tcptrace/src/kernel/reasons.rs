//! The kernel's names for why it did something, read from its BTF: why it
//! sent an RST (`enum sk_rst_reason`) and why it dropped a packet (`enum
//! skb_drop_reason`). Numbers and names differ by kernel version, so both
//! come from the running kernel (and travel in a recording's header).

use std::collections::BTreeMap;

use tcptrace_common::{DropCodes, NO_REASON};

use super::Btf;

/// Reason names by number, as one kernel enum names them (without its
/// prefix: the names the tracepoints themselves print).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reasons(BTreeMap<u32, String>);

/// `enum sk_rst_reason`: why an RST was sent.
pub type ResetReasons = Reasons;
/// `enum skb_drop_reason`: why a packet was dropped.
pub type DropReasons = Reasons;

impl Reasons {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (u32, &'a str)>) -> Reasons {
        Reasons(pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect())
    }

    pub fn name(&self, code: u32) -> Option<&str> {
        self.0.get(&code).map(String::as_str)
    }

    /// The number of the reason named `name`.
    pub fn code(&self, name: &str) -> Option<u32> {
        self.0
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(&code, _)| code)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every code and its name.
    pub fn pairs(&self) -> &BTreeMap<u32, String> {
        &self.0
    }

    /// The enumerators of `enum name` that start with `prefix`, without it.
    fn from_enum(btf: &Btf, name: &str, prefix: &str) -> Reasons {
        Reasons(
            btf.enum_values(name)
                .into_iter()
                .filter_map(|(value, full)| Some((value, full.strip_prefix(prefix)?.to_owned())))
                .collect(),
        )
    }

    /// `enum sk_rst_reason` without its `SK_RST_REASON_` prefix.
    pub(super) fn resets_from_btf(btf: &Btf) -> ResetReasons {
        Reasons::from_enum(btf, "sk_rst_reason", "SK_RST_REASON_")
    }

    /// `enum skb_drop_reason` without its `SKB_DROP_REASON_` prefix. The
    /// enumerators without it (`SKB_NOT_DROPPED_YET`, `SKB_CONSUMED`) are
    /// not drops, and `MAX` and `SUBSYS_MASK` are bounds, not reasons.
    pub(super) fn drops_from_btf(btf: &Btf) -> DropReasons {
        let mut all = Reasons::from_enum(btf, "skb_drop_reason", "SKB_DROP_REASON_");
        all.0
            .retain(|_, name| name != "MAX" && name != "SUBSYS_MASK");
        all
    }

    /// The codes the drop program needs, from drop reason names.
    pub(super) fn drop_codes(&self) -> DropCodes {
        DropCodes {
            listen_overflow: self.code("TCP_LISTEN_OVERFLOW").unwrap_or(NO_REASON),
            queue_purge: self.code("QUEUE_PURGE").unwrap_or(NO_REASON),
            not_specified: self.code("NOT_SPECIFIED").unwrap_or(NO_REASON),
            _pad: 0,
        }
    }
}
