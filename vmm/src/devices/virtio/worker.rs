//! Runs virtio devices on the VMM's event loop: one subscriber per device watches its queue
//! notifications (ioeventfds) and its back-end descriptor, and hands each event to the device.
//! Work left after a device's per-event budget is re-queued by signalling the same eventfd, so
//! every other device gets its turn first.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::pci::VirtioPciDevice;
use super::{DeviceEvent, Progress};

/// Token of the back-end descriptor (queue tokens are their indices).
const BACKEND: u32 = u32::MAX;
/// Token of the worker's own eventfd, which re-runs back-end work left over by the budget.
const KICK: u32 = u32::MAX - 1;

/// The event-loop side of one virtio device.
pub struct VirtioWorker {
    device: Arc<Mutex<VirtioPciDevice>>,
    queue_evts: Vec<EventFd>,
    backend: Option<RawFd>,
    kick: EventFd,
}

impl VirtioWorker {
    pub fn new(device: Arc<Mutex<VirtioPciDevice>>) -> std::io::Result<Self> {
        let (queue_evts, backend) = {
            let d = device.lock().unwrap_or_else(|e| e.into_inner());
            (d.queue_events()?, d.backend_fd())
        };
        Ok(VirtioWorker {
            device,
            queue_evts,
            backend,
            kick: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?,
        })
    }

    fn run(&self, event: DeviceEvent) -> Progress {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle(event)
    }
}

impl MutEventSubscriber for VirtioWorker {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let _ = ops.add(Events::with_data(evt, i as u32, EventSet::IN));
        }
        if let Some(fd) = self.backend {
            // Edge-triggered: a device that cannot take more frames leaves them queued without
            // the loop waking again until new ones arrive or the guest notifies.
            let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
            let _ = ops.add(Events::with_data_raw(fd, BACKEND, set));
            let _ = ops.add(Events::with_data(&self.kick, KICK, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        if token == BACKEND || token == KICK {
            if token == KICK {
                let _ = self.kick.read();
            }
            if self.run(DeviceEvent::Backend) == Progress::More {
                let _ = self.kick.write(1);
            }
            return;
        }
        let Some(evt) = self.queue_evts.get(token as usize) else {
            return;
        };
        // Any number of notifications since the last read count as one.
        let _ = evt.read();
        if self.run(DeviceEvent::Queue(token as usize)) == Progress::More {
            let _ = evt.write(1);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::devices::virtio::pci::tests::{bring_up, device};
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::testing::GuestQueue;
    use event_manager::{EventManager, SubscriberOps};

    type Sub = Arc<Mutex<dyn MutEventSubscriber + Send>>;

    /// A storm of available chains is served one queue's worth per loop turn: the worker re-arms
    /// its own notification instead of looping, so other subscribers run in between.
    #[test]
    fn work_left_over_is_requeued_not_looped() {
        let mut q = GuestQueue::new(2);
        let mut d = device(&q, Box::new(Rng));
        bring_up(&mut d, 2);
        let d = Arc::new(Mutex::new(d));
        let worker = VirtioWorker::new(d.clone()).unwrap();
        let notify = worker.queue_evts[0].try_clone().unwrap();
        let mut events: EventManager<Sub> = EventManager::new().unwrap();
        events.add_subscriber(Arc::new(Mutex::new(worker)));
        q.desc(0, 0x10000, 8, 2, 0);
        q.publish(0);
        q.publish(0);
        notify.write(1).unwrap();
        events.run_with_timeout(100).unwrap();
        assert_eq!(q.used_idx(), 2, "one queue's worth per turn");
        q.publish(0);
        q.publish(0);
        // No new notification from the guest: the re-armed one serves the rest.
        events.run_with_timeout(100).unwrap();
        assert_eq!(q.used_idx(), 4);
        // The budget ran out again, so one more turn finds the queue empty; then the loop idles.
        assert_eq!(events.run_with_timeout(100).unwrap(), 1);
        assert_eq!(q.used_idx(), 4);
        assert_eq!(events.run_with_timeout(0).unwrap(), 0);
    }
}
