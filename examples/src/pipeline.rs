//! A producer/consumer pipeline on green queues: a producer, a stage of workers, a consumer,
//! joined by bounded queues so that a slow stage holds the ones before it back (backpressure)
//! instead of letting memory grow.

use std::time::Duration;

use greenhub::{Queue, thread::Builder};

/// What a pipeline run saw.
#[derive(Debug)]
pub struct Outcome {
    /// The consumer's items, in the order they arrived.
    pub received: Vec<u64>,
    /// The most items the first queue held at once.
    pub most_queued: usize,
}

/// Sends `items` numbers through `workers` green threads that each square a number (taking
/// `work` per item, a green sleep standing for I/O), with queues of `capacity` between the
/// stages. Runs in green threads; the caller waits for the consumer.
pub fn run(items: u64, workers: usize, capacity: usize, work: Duration) -> Outcome {
    let raw: Queue<Option<u64>> = Queue::bounded(capacity).named("pipeline-raw");
    let cooked: Queue<Option<u64>> = Queue::bounded(capacity).named("pipeline-cooked");
    let producer = {
        let raw = raw.clone();
        Builder::new()
            .name("producer")
            .spawn(move || {
                let mut most = 0;
                for i in 0..items {
                    // Waits while the queue is full: the workers set the pace.
                    if raw.put(Some(i)).is_err() {
                        break;
                    }
                    most = most.max(raw.len());
                }
                // One end marker per worker.
                for _ in 0..workers {
                    let _ = raw.put(None);
                }
                most
            })
            .expect("spawn the producer")
    };
    let stage: Vec<_> = (0..workers)
        .map(|w| {
            let (raw, cooked) = (raw.clone(), cooked.clone());
            Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || {
                    while let Ok(Some(i)) = raw.get() {
                        let _ = greenhub::sleep(work);
                        if cooked.put(Some(i * i)).is_err() {
                            break;
                        }
                    }
                    let _ = cooked.put(None);
                })
                .expect("spawn a worker")
        })
        .collect();
    let consumer = {
        let cooked = cooked.clone();
        Builder::new()
            .name("consumer")
            .spawn(move || {
                let mut received = Vec::new();
                let mut ended = 0;
                while ended < workers {
                    match cooked.get() {
                        Ok(Some(v)) => received.push(v),
                        Ok(None) => ended += 1,
                        Err(_) => break,
                    }
                }
                received
            })
            .expect("spawn the consumer")
    };
    let received = consumer.wait().unwrap_or_default();
    for w in stage {
        let _ = w.wait();
    }
    let most_queued = producer.wait().unwrap_or(0);
    Outcome {
        received,
        most_queued,
    }
}
