//! A producer/consumer pipeline on green queues: a producer, a stage of workers, a consumer,
//! joined by bounded queues so that a slow stage holds the ones before it back (backpressure)
//! instead of letting memory grow.

use std::time::Duration;

use greenhub::Queue;
use greenhub::thread::{Builder, SpawnError};

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
/// stages. Runs in green threads; the caller waits for the consumer. A thread that cannot be
/// spawned (the thread limit, say) ends the run with its error, the queues closed so that the
/// threads already started end too.
pub fn run(
    items: u64,
    workers: usize,
    capacity: usize,
    work: Duration,
) -> Result<Outcome, SpawnError> {
    let raw: Queue<Option<u64>> = Queue::bounded(capacity).named("pipeline-raw");
    let cooked: Queue<Option<u64>> = Queue::bounded(capacity).named("pipeline-cooked");
    let failed = |e: SpawnError| {
        raw.close();
        cooked.close();
        e
    };
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
            .map_err(failed)?
    };
    let stage: Vec<greenhub::GreenThread<()>> = (0..workers)
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
                .map_err(failed)
        })
        .collect::<Result<_, _>>()?;
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
            .map_err(failed)?
    };
    let received = consumer.wait().unwrap_or_default();
    for w in stage {
        let _ = w.wait();
    }
    let most_queued = producer.wait().unwrap_or(0);
    Ok(Outcome {
        received,
        most_queued,
    })
}
