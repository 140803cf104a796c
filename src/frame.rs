//! Framing of LogEntry messages, as the engine writes them to a plugin's FIFO and reads them back
//! from ReadLogs: a 4-byte big-endian unsigned length, then that many bytes of protobuf. No
//! trailer, no maximum set by the engine.
//!
//! The decoder works on whatever bytes are available and never consumes a frame it has not seen
//! whole, so the FIFO reader can leave an incomplete frame in the pipe (see `fifo`). A declared
//! length over the cap is not a reason to allocate or to stop: the frame is skipped as its bytes
//! come, and counted (the pipeline counts it lost).

/// Bytes in the length prefix.
pub const PREFIX: usize = 4;

/// The largest payload read from a FIFO: 1 MiB. The engine splits lines at 16 KiB, so its
/// frames stay under 16.5 KiB; a frame over this is not the engine's (a protocol violation).
/// Fixed, not derived from a pipe's size: the kernel may grant a pipe as little as 8 KiB.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What [`FrameDecoder::decode`] did with a buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes at the front of the buffer that are finished with: whole frames handed out plus
    /// bytes of oversized frames skipped. The rest is an incomplete frame.
    pub consumed: usize,
    /// Oversized frames whose skipping started in this call.
    pub oversized: u64,
}

/// Splits a byte stream into frame payloads, skipping frames over `cap`.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    cap: usize,
    /// Bytes of an oversized frame still to skip (its prefix was in an earlier buffer).
    skipping: u64,
}

impl FrameDecoder {
    /// `cap` is the largest payload accepted.
    pub fn new(cap: usize) -> Self {
        Self { cap, skipping: 0 }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// True while the rest of an oversized frame is being skipped: the bytes at the front of the
    /// next buffer belong to it.
    pub fn is_skipping(&self) -> bool {
        self.skipping > 0
    }

    /// Hands every whole frame at the front of `buf` to `on_frame`, in order, and says how many
    /// bytes are done with. Call again with the unconsumed rest followed by newer bytes.
    pub fn decode(&mut self, buf: &[u8], mut on_frame: impl FnMut(&[u8])) -> Decoded {
        let mut done = Decoded::default();
        let mut at = 0usize;
        loop {
            if self.skipping > 0 {
                let take =
                    (buf.len() - at).min(usize::try_from(self.skipping).unwrap_or(usize::MAX));
                at += take;
                self.skipping -= take as u64;
                if self.skipping > 0 {
                    break;
                }
                continue;
            }
            let rest = &buf[at..];
            let Some(prefix) = rest.first_chunk::<PREFIX>() else {
                break;
            };
            let len = u32::from_be_bytes(*prefix) as usize;
            if len > self.cap {
                done.oversized += 1;
                at += PREFIX;
                self.skipping = len as u64;
                continue;
            }
            let Some(payload) = rest.get(PREFIX..PREFIX + len) else {
                break;
            };
            on_frame(payload);
            at += PREFIX + len;
        }
        done.consumed = at;
        done
    }
}

/// Appends one frame holding `payload` to `out`.
pub fn encode_into(out: &mut Vec<u8>, payload: &[u8]) {
    // ReadLogs payloads are single entries the store accepted, far below 4 GiB.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_into(&mut out, p);
        }
        out
    }

    /// Feeds `stream` in the given chunk sizes the way the FIFO reader does: unconsumed bytes
    /// stay at the front and newer bytes are added behind them.
    fn decode_in_chunks(stream: &[u8], chunks: &[usize], cap: usize) -> (Vec<Vec<u8>>, u64, usize) {
        let mut decoder = FrameDecoder::new(cap);
        let mut pending = Vec::new();
        let mut frames = Vec::new();
        let mut oversized = 0;
        let mut fed = 0;
        let mut sizes = chunks.iter().cycle();
        while fed < stream.len() {
            let n = (*sizes.next().unwrap()).max(1).min(stream.len() - fed);
            pending.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            let done = decoder.decode(&pending, |p| frames.push(p.to_vec()));
            oversized += done.oversized;
            pending.drain(..done.consumed);
        }
        (frames, oversized, pending.len())
    }

    #[test]
    fn every_split_point_of_a_stream_yields_the_same_frames() {
        let payloads: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![], vec![7; 300], b"last".to_vec()];
        let stream = framed(&payloads);
        for cut in 0..=stream.len() {
            let first = cut.max(1);
            let (frames, _, left) = decode_in_chunks(&stream, &[first, stream.len()], 1024);
            assert_eq!(frames, payloads, "cut at {cut}");
            assert_eq!(left, 0);
        }
        let (frames, _, _) = decode_in_chunks(&stream, &[1], 1024);
        assert_eq!(frames, payloads, "one byte at a time");
    }

    #[test]
    fn oversized_frame_is_skipped_and_reading_goes_on() {
        let payloads = vec![b"before".to_vec(), vec![1; 5000], b"after".to_vec()];
        let stream = framed(&payloads);
        for chunk in [1, 3, 64, 4096, stream.len()] {
            let (frames, oversized, left) = decode_in_chunks(&stream, &[chunk], 100);
            assert_eq!(
                frames,
                vec![b"before".to_vec(), b"after".to_vec()],
                "chunk {chunk}"
            );
            assert_eq!(oversized, 1);
            assert_eq!(left, 0);
        }
    }

    #[test]
    fn absurd_length_prefix_allocates_nothing_and_waits_for_its_bytes() {
        let mut decoder = FrameDecoder::new(1 << 20);
        let done = decoder.decode(&u32::MAX.to_be_bytes(), |_| panic!("no frame"));
        assert_eq!(
            done,
            Decoded {
                consumed: 4,
                oversized: 1
            }
        );
        assert!(decoder.is_skipping());
    }

    #[test]
    fn incomplete_frame_is_left_unconsumed() {
        let stream = framed(&[b"hello".to_vec()]);
        let mut decoder = FrameDecoder::new(64);
        let done = decoder.decode(&stream[..stream.len() - 1], |_| panic!("not whole yet"));
        assert_eq!(done.consumed, 0);
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_frames_in_order(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
            chunks in proptest::collection::vec(1usize..300, 1..10),
        ) {
            let stream = framed(&payloads);
            let (frames, oversized, left) = decode_in_chunks(&stream, &chunks, 1024);
            prop_assert_eq!(frames, payloads);
            prop_assert_eq!(oversized, 0);
            prop_assert_eq!(left, 0);
        }
    }
}
