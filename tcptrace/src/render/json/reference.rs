//! What the direct writer must match, with serde: lives and records as
//! their types derive `Serialize`; verdicts as their codes derive it, with
//! the words beside them.

use serde::{Serialize, Serializer};

use crate::{
    decode::{Record, TcpState},
    model::{Close, Incomplete, Open, RstReason, Side, SocketLife, Verdict},
    render::words,
};

#[derive(Serialize)]
struct SocketLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    socket: &'a SocketLife,
    verdict: WordedVerdict<'a>,
}

#[derive(Serialize)]
struct WordedVerdict<'a> {
    open: &'a Open,
    close: WordedClose<'a>,
    incomplete: &'a [Incomplete],
    summary: String,
    attribution: Option<String>,
}

/// A close as it derives `Serialize`, with the words for its reason.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WordedClose<'a> {
    Refused {
        side: Side,
        reason: Option<WordedReason<'a>>,
    },
    ResetSent {
        state: Option<TcpState>,
        reason: WordedReason<'a>,
    },
    #[serde(untagged)]
    Other(&'a Close),
}

#[derive(Serialize)]
struct WordedReason<'a> {
    #[serde(flatten)]
    reason: &'a RstReason,
    text: String,
}

impl<'a> WordedReason<'a> {
    fn new(reason: &'a RstReason, unaccepted: Option<bool>) -> Self {
        let mut text = String::new();
        words::reason_text_in(&mut text, reason, unaccepted);
        WordedReason { reason, text }
    }
}

impl<'a> WordedClose<'a> {
    fn new(close: &'a Close, unaccepted: bool) -> Self {
        match close {
            Close::Refused { side, reason } => WordedClose::Refused {
                side: *side,
                reason: reason.as_ref().map(|r| WordedReason::new(r, None)),
            },
            Close::ResetSent { state, reason } => WordedClose::ResetSent {
                state: *state,
                reason: WordedReason::new(reason, Some(unaccepted)),
            },
            other => WordedClose::Other(other),
        }
    }
}

#[derive(Serialize)]
struct RecordLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    skaddr_hex: Option<Hex>,
    #[serde(flatten)]
    record: &'a Record,
}

struct Hex(u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

pub fn socket_line(life: &SocketLife, verdict: &Verdict) -> String {
    let line = SocketLine {
        kind: "socket",
        socket: life,
        verdict: WordedVerdict {
            open: &verdict.open,
            close: WordedClose::new(&verdict.close, life.unaccepted),
            incomplete: &verdict.incomplete,
            summary: words::summary(life, verdict),
            attribution: words::attribution(life, verdict),
        },
    };
    // Plain data into memory: serializing cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

pub fn record_line(record: &Record) -> String {
    let kind = match record {
        Record::State { .. } => "transition",
        _ => "event",
    };
    let line = RecordLine {
        kind,
        skaddr_hex: record.sock().map(|s| Hex(s.skaddr)),
        record,
    };
    serde_json::to_string(&line).unwrap_or_default()
}
