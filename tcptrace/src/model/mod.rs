//! The data model: what the pipeline's stages hand each other once records
//! are decoded. A [`SocketLife`] is everything the tracker learned about one
//! socket; a [`Verdict`] is what the classifier made of it, as codes and
//! fields. Plain data (serde-serializable, snake_case), no logic beyond small
//! accessors: the tracker fills lives in, the classifier reads them, and
//! only the renderers put any of it into words.

mod life;
mod tally;
mod verdict;

pub use self::{
    life::{
        Accepted, Direction, DropCount, ExitInfo, Family, JoinedBy, ResetReceived, ResetSent,
        Retransmit, RetransmitKind, Role, SegmentDropped, SegmentKind, SignalInfo, SockError,
        SocketLife, Step,
    },
    tally::{DropCounts, HostSample, ListenerRef, ListenerSample, NetnsSample, Tally},
    verdict::{Close, Incomplete, LocalDrops, Open, RstReason, Side, Verdict},
};
