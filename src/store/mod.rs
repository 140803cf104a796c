//! The local store: one directory of segment files per container. It is the spool the shipper
//! follows and the source `docker logs` reads; nothing else holds log data.
//!
//! # Layout on disk
//!
//! ```text
//! <root>/<64-hex container id>/
//!     00000000000000000001.log        a sealed segment, not yet compressed
//!     00000000000000000002.log.gz     a sealed, compressed segment
//!     00000000000000000003.log        the active segment (highest number), appended to
//! ```
//!
//! Segments are numbered, never renamed (the engine's drivers shift `container.log.N` on every
//! rotation; a stable number lets a checkpoint say "segment 7, offset 1234" for good). The number
//! is 20 decimal digits so names sort in order.
//!
//! # Record layout (the engine's `local` driver layout)
//!
//! `[u32 BE size][LogEntry protobuf, size bytes][u32 BE size]`, back to back, nothing else: the
//! trailing size lets tail read backwards from the end of a file without an index.
//!
//! # Invariants
//! - Only the active segment is written, only by appending whole records; a batch goes out in one
//!   `write` per segment it touches.
//! - Rotation happens before a record is written when the active segment is at or over
//!   `max_size` (so a segment can exceed it by at most one record), as the engine's drivers do.
//! - A sealed segment is compressed in the background when `compress` is set: written to
//!   `N.log.gz.tmp`, synced, renamed to `N.log.gz`, and only then `N.log` is removed, so a reader
//!   always finds one of the two. The gzip header's extra field holds
//!   `{"LastTime":"<RFC 3339 nanos>"}` (the time of the segment's last entry), as the engine's
//!   `local` driver writes it, so a `--since` read can skip whole files.
//! - At most `max_file` segments are kept for `docker logs`; older ones are deleted, oldest first.
//! - A torn record at the end of the active segment (a crash mid-write) is found when the store is
//!   opened and cut off; every record before it stays readable.
//! - Offsets in a [`Position`] count bytes of the uncompressed segment.

// Implementation: see the submodules.
