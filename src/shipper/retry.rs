//! Retry and verdict application, as a pure function: given the documents of a bulk request
//! (their indices in the batch, `todo`) and what became of the request ([`Answer`]), [`judge`]
//! says which documents are accepted, which are dead-lettered, which are held, which go again,
//! and how long to wait first ([`Step`]). It does nothing itself: the destination's loop
//! carries a step out (metrics, dead-letter file, episode reports, the pause).
//!
//! The rules (docs/elasticsearch.md; the table of answers is `bulk::classify`):
//! - Written and 409 duplicates are accepted; a document refused for good is dead-lettered;
//!   both are progress, which resets the backoff.
//! - A passing refusal goes again after the next backoff step.
//! - A document the destination is not ready for (403, 404, a write block, a missing pipeline)
//!   or whose answer is unknown is held: it goes again and is never dead-lettered. An unknown
//!   answer waits the longest (the backoff's cap).
//! - A whole request that failed on the way or was answered "retry all" goes again after the
//!   next step, with a warning; refused credentials or a refused request go again after the cap,
//!   with an error.
//! - A 413 splits the request in two halves (the second sent after the first, with no pause);
//!   a single document too large is dead-lettered.

use super::bulk::{ItemVerdict, RequestVerdict};
use super::not_ready::Hold;

/// What became of a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// No node answered (every node tried): the client's error, for the operator.
    Failed(String),
    /// `node` answered, judged as `verdict`.
    Judged {
        node: String,
        verdict: RequestVerdict,
    },
}

/// A document held back: the destination is not ready for it, or its answer is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub item: usize,
    pub hold: Hold,
    pub status: u16,
    pub reason: String,
}

/// A document refused for good: it goes to the dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub item: usize,
    pub status: u16,
    pub reason: String,
}

/// The pause before the documents that go again are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// None: nothing goes again, or what goes again goes now (the halves of a split).
    No,
    /// The next backoff step.
    Step,
    /// A step at the backoff's cap (an answer this plugin does not know).
    Cap,
    /// The next backoff step, after a warning (at most one every 30 s).
    Warn(String),
    /// A step at the cap, after an error (at most one every 60 s): an operator must act.
    Slow(String),
}

/// What to do after one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Written or already there, in request order.
    pub accepted: Vec<usize>,
    /// How many of `accepted` were 409 duplicates.
    pub duplicates: usize,
    pub refused: Vec<Refusal>,
    pub held: Vec<Held>,
    /// What goes again (in the same chunk), after `wait`.
    pub again: Vec<usize>,
    /// A 413 split off this second half: it is sent after `again`, as a chunk of its own.
    pub split_off: Option<Vec<usize>>,
    /// Whether the backoff starts over.
    pub progress: bool,
    pub wait: Wait,
}

impl Step {
    fn new(wait: Wait) -> Self {
        Step {
            accepted: Vec::new(),
            duplicates: 0,
            refused: Vec::new(),
            held: Vec::new(),
            again: Vec::new(),
            split_off: None,
            progress: false,
            wait,
        }
    }

    /// Everything goes again after `wait`.
    fn all_again(todo: Vec<usize>, wait: Wait) -> Self {
        Step {
            again: todo,
            ..Step::new(wait)
        }
    }

    /// The documents that count as retried (sent again after a pause).
    pub fn retried(&self) -> usize {
        match self.wait {
            Wait::No => 0,
            _ => self.again.len(),
        }
    }
}

/// Judges one answer to a request of the documents `todo` (indices in the batch, in request
/// order). Verdicts beyond `todo`, or documents without one, cannot happen: `bulk::classify`
/// answers one verdict per document.
pub fn judge(todo: Vec<usize>, answer: Answer) -> Step {
    let (node, verdict) = match answer {
        Answer::Failed(error) => {
            return Step::all_again(todo, Wait::Warn(format!("bulk request failed: {error}")))
        }
        Answer::Judged { node, verdict } => (node, verdict),
    };
    match verdict {
        RequestVerdict::Items(verdicts) => items(&todo, verdicts),
        RequestVerdict::TooLarge if todo.len() > 1 => {
            let mut again = todo;
            let second = again.split_off(again.len() / 2);
            Step {
                again,
                split_off: Some(second),
                ..Step::new(Wait::No)
            }
        }
        // As it always was, a lone document too large does not reset the backoff: it is the
        // only document of its chunk, and the chunk is done.
        RequestVerdict::TooLarge => Step {
            refused: todo
                .first()
                .map(|&item| Refusal {
                    item,
                    status: 413,
                    reason: "document alone is larger than the server accepts".to_owned(),
                })
                .into_iter()
                .collect(),
            ..Step::new(Wait::No)
        },
        RequestVerdict::RetryAll { reason } => {
            Step::all_again(todo, Wait::Warn(format!("{node} answered: {reason}")))
        }
        RequestVerdict::Unauthorized { status, reason } => Step::all_again(
            todo,
            Wait::Slow(format!("{node} refused our credentials (HTTP {status}: {reason}); check user/password or api_key (ES_USER, ES_PASSWORD, ES_API_KEY). Logs are kept locally and shipping resumes once they are accepted")),
        ),
        RequestVerdict::Refused { status, reason } => Step::all_again(
            todo,
            Wait::Slow(format!("{node} refused the bulk request (HTTP {status}: {reason}); check the index and pipeline options. Logs are kept locally and retried")),
        ),
    }
}

/// The per-document verdicts of one answer.
fn items(todo: &[usize], verdicts: Vec<ItemVerdict>) -> Step {
    let mut step = Step::new(Wait::No);
    for (&item, verdict) in todo.iter().zip(verdicts) {
        match verdict {
            ItemVerdict::Written => step.accepted.push(item),
            ItemVerdict::Duplicate => {
                step.duplicates += 1;
                step.accepted.push(item);
            }
            ItemVerdict::Retry { .. } => step.again.push(item),
            ItemVerdict::NotReady { status, reason } => {
                step.held.push(Held {
                    item,
                    hold: Hold::NotReady,
                    status,
                    reason,
                });
                step.again.push(item);
            }
            ItemVerdict::Unknown { status, reason } => {
                step.held.push(Held {
                    item,
                    hold: Hold::Unknown,
                    status,
                    reason,
                });
                step.again.push(item);
            }
            ItemVerdict::Reject { status, reason } => step.refused.push(Refusal {
                item,
                status,
                reason,
            }),
        }
    }
    step.progress = !step.accepted.is_empty() || !step.refused.is_empty();
    // Unknown answers wait the longest; a destination not ready backs off from the first wait,
    // so a cluster fixed early in an episode is used again soon and a long episode costs one
    // request per backoff_max.
    step.wait = if step.again.is_empty() {
        Wait::No
    } else if step.held.iter().any(|h| h.hold == Hold::Unknown) {
        Wait::Cap
    } else {
        Wait::Step
    };
    step
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(verdict: RequestVerdict) -> Answer {
        Answer::Judged {
            node: "http://es1:9200".into(),
            verdict,
        }
    }

    fn items_answer(verdicts: Vec<ItemVerdict>) -> Answer {
        judged(RequestVerdict::Items(verdicts))
    }

    fn reason(status: u16) -> (u16, String) {
        (status, format!("reason {status}"))
    }

    #[test]
    fn all_written_is_progress_and_nothing_goes_again() {
        let step = judge(
            vec![3, 4],
            items_answer(vec![ItemVerdict::Written, ItemVerdict::Duplicate]),
        );
        assert_eq!(step.accepted, vec![3, 4]);
        assert_eq!(step.duplicates, 1);
        assert!(step.again.is_empty() && step.refused.is_empty() && step.held.is_empty());
        assert!(step.progress);
        assert_eq!(step.wait, Wait::No);
        assert_eq!(step.retried(), 0);
    }

    #[test]
    fn a_passing_refusal_goes_again_after_a_step_and_the_rest_is_progress() {
        let (status, why) = reason(429);
        let step = judge(
            vec![0, 1, 2],
            items_answer(vec![
                ItemVerdict::Written,
                ItemVerdict::Retry {
                    status,
                    reason: why,
                },
                ItemVerdict::Written,
            ]),
        );
        assert_eq!(step.accepted, vec![0, 2]);
        assert_eq!(step.again, vec![1]);
        assert!(step.progress);
        assert_eq!(step.wait, Wait::Step);
        assert_eq!(step.retried(), 1);
    }

    #[test]
    fn a_document_refused_for_good_is_dead_lettered_not_sent_again() {
        let (status, why) = reason(400);
        let step = judge(
            vec![7],
            items_answer(vec![ItemVerdict::Reject {
                status,
                reason: why.clone(),
            }]),
        );
        assert_eq!(
            step.refused,
            vec![Refusal {
                item: 7,
                status,
                reason: why
            }]
        );
        assert!(step.again.is_empty() && step.accepted.is_empty());
        assert!(step.progress, "a dead-letter is progress");
        assert_eq!(step.wait, Wait::No);
    }

    #[test]
    fn a_document_the_destination_is_not_ready_for_is_held_never_dead_lettered() {
        for status in [403, 404] {
            let (status, why) = reason(status);
            let step = judge(
                vec![0, 1],
                items_answer(vec![
                    ItemVerdict::NotReady {
                        status,
                        reason: why.clone(),
                    },
                    ItemVerdict::NotReady {
                        status,
                        reason: why.clone(),
                    },
                ]),
            );
            assert!(step.refused.is_empty(), "{status} dead-lettered");
            assert_eq!(step.again, vec![0, 1]);
            assert_eq!(step.held.len(), 2);
            assert!(step.held.iter().all(|h| h.hold == Hold::NotReady));
            assert!(!step.progress);
            assert_eq!(step.wait, Wait::Step);
            assert_eq!(step.retried(), 2);
        }
    }

    #[test]
    fn an_unknown_answer_is_held_and_waits_the_cap() {
        let (status, why) = reason(418);
        let step = judge(
            vec![0, 1],
            items_answer(vec![
                ItemVerdict::Written,
                ItemVerdict::Unknown {
                    status,
                    reason: why,
                },
            ]),
        );
        assert_eq!(step.accepted, vec![0]);
        assert_eq!(step.again, vec![1]);
        assert_eq!(step.held[0].hold, Hold::Unknown);
        assert!(step.refused.is_empty());
        assert!(step.progress, "the written one still resets the backoff");
        assert_eq!(step.wait, Wait::Cap);
    }

    #[test]
    fn a_request_that_failed_on_the_way_goes_again_whole_with_a_warning() {
        let step = judge(vec![1, 2], Answer::Failed("connection refused".into()));
        assert_eq!(step.again, vec![1, 2]);
        assert!(!step.progress);
        match &step.wait {
            Wait::Warn(message) => assert!(message.contains("connection refused"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(step.retried(), 2);
    }

    #[test]
    fn retry_all_goes_again_whole_with_a_warning_naming_the_node() {
        let step = judge(
            vec![0],
            judged(RequestVerdict::RetryAll {
                reason: "HTTP 503".into(),
            }),
        );
        assert_eq!(step.again, vec![0]);
        match &step.wait {
            Wait::Warn(message) => {
                assert_eq!(message, "http://es1:9200 answered: HTTP 503")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_credentials_or_request_go_again_slowly_with_an_error() {
        for verdict in [
            RequestVerdict::Unauthorized {
                status: 401,
                reason: "bad".into(),
            },
            RequestVerdict::Refused {
                status: 400,
                reason: "no such pipeline".into(),
            },
        ] {
            let step = judge(vec![0, 1], judged(verdict.clone()));
            assert_eq!(step.again, vec![0, 1], "{verdict}");
            assert!(step.refused.is_empty() && step.held.is_empty());
            assert!(matches!(&step.wait, Wait::Slow(m) if m.contains("http://es1:9200")));
            assert_eq!(step.retried(), 2);
        }
    }

    #[test]
    fn too_large_splits_in_halves_sent_one_after_the_other_without_a_pause() {
        let step = judge(vec![0, 1, 2, 3, 4], judged(RequestVerdict::TooLarge));
        assert_eq!(step.again, vec![0, 1]);
        assert_eq!(step.split_off, Some(vec![2, 3, 4]));
        assert_eq!(step.wait, Wait::No);
        assert!(step.refused.is_empty());
    }

    #[test]
    fn a_lone_document_too_large_is_dead_lettered() {
        let step = judge(vec![9], judged(RequestVerdict::TooLarge));
        assert_eq!(step.refused.len(), 1);
        assert_eq!((step.refused[0].item, step.refused[0].status), (9, 413));
        assert!(step.again.is_empty() && step.split_off.is_none());
        assert!(!step.progress);
        assert_eq!(step.wait, Wait::No);
    }
}
