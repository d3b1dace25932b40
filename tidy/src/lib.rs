//! Workspace checks, run as this crate's tests (`cargo test -p tidy`): the
//! architecture invariants of `docs/architecture.md` (which crate may depend
//! on what) and the house rule that every module opens with a `//!` doc.
//!
//! The crate has no code of its own; it must not be depended on.
