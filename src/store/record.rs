//! Record framing, `[u32 BE size][payload][u32 BE size]`, and the [`Batch`] the FIFO pipeline
//! fills. Nothing here touches a file.

use std::ops::Range;

use super::MAX_PAYLOAD_LEN;

/// Bytes of framing around each payload: the leading and the trailing size.
pub(crate) const FRAMING: usize = 8;

/// Bytes of record buffer a [`Batch`] keeps between batches once a burst is over: a pipe's
/// worth of ordinary lines. A burst (long lines, a backlog in the pipe) may take more for as long
/// as it lasts; one run per container keeps a batch, so what it keeps is paid per container.
const RETAINED_BYTES: usize = 256 << 10;

/// Records ready to append, built by the FIFO pipeline. `payload` is the LogEntry protobuf bytes
/// exactly as received; `time_nano` its timestamp (already decoded by the caller).
#[derive(Debug, Default)]
pub struct Batch {
    /// The records, encoded back to back exactly as they go to disk, so an append is one
    /// `write` of a slice of this buffer per segment.
    buf: Vec<u8>,
    /// Per record: its end offset in `buf` and its time_nano.
    records: Vec<(usize, i64)>,
    /// The largest payload pushed, so append can refuse an oversized record before writing.
    largest: usize,
}

impl Batch {
    pub fn push(&mut self, payload: &[u8], time_nano: i64) {
        // An oversized payload gets a saturated size here; append refuses the batch before any
        // of it reaches disk (see `largest`), so the wrong size is never written.
        let size = u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        self.buf.reserve(payload.len() + FRAMING);
        self.buf.extend_from_slice(&size);
        self.buf.extend_from_slice(payload);
        self.buf.extend_from_slice(&size);
        self.records.push((self.buf.len(), time_nano));
        self.largest = self.largest.max(payload.len());
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes the batch takes in the store layout.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Empties the batch for the pipeline to reuse. It keeps its memory while batches stay large
    /// (reallocating for every batch of a burst would cost more than it saves), and gives back
    /// what is over [`RETAINED_BYTES`] once a batch uses less than a quarter of it: the burst is
    /// over.
    pub fn clear(&mut self) {
        let used = (self.buf.len(), self.records.len());
        self.buf.clear();
        self.records.clear();
        self.largest = 0;
        if self.buf.capacity() > RETAINED_BYTES && used.0 < self.buf.capacity() / 4 {
            self.buf.shrink_to(RETAINED_BYTES.max(2 * used.0));
        }
        // Records are 16 bytes each; the same rule for their list.
        let retained_records = RETAINED_BYTES / 16;
        if self.records.capacity() > retained_records && used.1 < self.records.capacity() / 4 {
            self.records.shrink_to(retained_records.max(2 * used.1));
        }
    }

    pub(crate) fn largest_payload(&self) -> usize {
        self.largest
    }

    /// The encoded bytes of records `range` (record indexes).
    pub(crate) fn encoded(&self, range: Range<usize>) -> &[u8] {
        let start = self.record_start(range.start);
        let end = match range.end.checked_sub(1) {
            Some(last) => self.records[last].0,
            None => start,
        };
        &self.buf[start..end]
    }

    /// Encoded length of record `index`.
    pub(crate) fn record_len(&self, index: usize) -> u64 {
        (self.records[index].0 - self.record_start(index)) as u64
    }

    pub(crate) fn time_nano(&self, index: usize) -> i64 {
        self.records[index].1
    }

    fn record_start(&self, index: usize) -> usize {
        match index.checked_sub(1) {
            Some(previous) => self.records[previous].0,
            None => 0,
        }
    }
}

/// Why bytes are not a well-framed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("size {0} is over the limit of {MAX_PAYLOAD_LEN}")]
    TooLarge(u32),
    #[error("leading size {leading} differs from trailing size {trailing}")]
    SizesDiffer { leading: u32, trailing: u32 },
}

pub(crate) fn read_size(bytes: &[u8]) -> u32 {
    let mut size = [0u8; 4];
    size.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(size)
}

/// The whole record's length (framing included) for a size field, if the size is in bounds.
pub(crate) fn record_len_for(size: u32) -> Result<usize, BadRecord> {
    if size as usize > MAX_PAYLOAD_LEN {
        return Err(BadRecord::TooLarge(size));
    }
    Ok(size as usize + FRAMING)
}

/// What the front of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Front {
    /// A whole record; its payload is `payload` and it ends at `end`.
    Record { payload: Range<usize>, end: usize },
    /// Not enough bytes; `needed` is the whole record's length if the size field was readable.
    Incomplete { needed: Option<usize> },
}

/// Parses the record at the start of `buf`, checking both sizes.
pub(crate) fn front(buf: &[u8]) -> Result<Front, BadRecord> {
    if buf.len() < 4 {
        return Ok(Front::Incomplete { needed: None });
    }
    let leading = read_size(buf);
    let len = record_len_for(leading)?;
    if buf.len() < len {
        return Ok(Front::Incomplete { needed: Some(len) });
    }
    let trailing = read_size(&buf[len - 4..]);
    if trailing != leading {
        return Err(BadRecord::SizesDiffer { leading, trailing });
    }
    Ok(Front::Record {
        payload: 4..len - 4,
        end: len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_encodes_the_local_driver_layout() {
        let mut batch = Batch::default();
        batch.push(b"abc", 7);
        batch.push(b"", 8);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.encoded_len(), 3 + 8 + 8);
        assert_eq!(batch.encoded(0..1), b"\0\0\0\x03abc\0\0\0\x03");
        assert_eq!(batch.encoded(1..2), b"\0\0\0\0\0\0\0\0");
        assert_eq!(batch.record_len(0), 11);
        assert_eq!(batch.time_nano(1), 8);
        assert_eq!(batch.encoded(0..0), b"");
        let capacity = batch.buf.capacity();
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.encoded_len(), 0);
        assert_eq!(batch.buf.capacity(), capacity);
    }

    /// Regression (issue 12, item 11): a run's batch kept the capacity of its largest burst for
    /// as long as the container ran (megabytes per container after one burst of long lines).
    #[test]
    fn a_batch_gives_back_its_memory_after_a_burst() {
        let mut batch = Batch::default();
        for _ in 0..4 {
            batch.push(&vec![b'x'; 1 << 20], 1);
        }
        batch.clear();
        // Still bursting: the memory is kept for the next batch.
        for _ in 0..4 {
            batch.push(&vec![b'x'; 1 << 20], 1);
        }
        batch.clear();
        // The burst is over: a small batch, and the memory goes back.
        batch.push(b"small", 2);
        batch.clear();
        assert!(
            batch.buf.capacity() <= RETAINED_BYTES,
            "{} bytes kept",
            batch.buf.capacity()
        );
    }

    #[test]
    fn front_checks_sizes_at_every_cut() {
        let mut batch = Batch::default();
        batch.push(b"hello", 1);
        let bytes = batch.encoded(0..1);
        for cut in 0..bytes.len() {
            assert!(matches!(front(&bytes[..cut]), Ok(Front::Incomplete { .. })));
        }
        assert_eq!(
            front(bytes),
            Ok(Front::Record {
                payload: 4..9,
                end: 13
            })
        );
        let mut bad = bytes.to_vec();
        bad[12] = 9;
        assert!(matches!(front(&bad), Err(BadRecord::SizesDiffer { .. })));
        assert!(matches!(
            front(&[0xff, 0xff, 0xff, 0xff]),
            Err(BadRecord::TooLarge(_))
        ));
    }
}
