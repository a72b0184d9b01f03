//! The data model: what the pipeline's stages hand each other once records
//! are decoded. A [`SocketLife`] is everything the tracker learned about one
//! socket. Plain data (serde-serializable, snake_case), no logic beyond
//! small accessors: the tracker fills lives in, the later stages read them.

mod life;

pub use self::life::{
    ExitInfo, Family, ResetReceived, ResetSent, Retransmit, RetransmitKind, Role, SignalInfo,
    SockError, SocketLife, Step,
};
