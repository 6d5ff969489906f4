//! The System screen's "Create state partition": the operator picks a whole disk among those
//! that can take one (the others are listed with the reason), is told plainly what will be
//! erased, and presses y. Pure, like `app`: keys and answers in, `Effect`s out.

use super::app::Effect;
use super::keys::Key;
use crate::agent::api::CreateStateRequest;
use crate::localapi::types::StateView;
use crate::localapi::ApiError;
use crate::state::create::DiskOffer;
use crate::state::Status as StateStatus;

/// Where the operator is in creating the state partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not creating one.
    Idle,
    /// Waiting for the disks (`Effect::LoadState`).
    Loading,
    /// Choosing among the usable disks.
    Choosing,
    /// The erase question for the chosen disk: y or n.
    Confirming,
    /// Waiting for the agent to create it.
    Creating,
}

/// The state partition part of the System screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateScreen {
    pub step: Step,
    /// The state partition and the disks, as last read.
    pub view: Option<StateView>,
    /// Index among the usable disks.
    pub disk: usize,
    /// The outcome of the last attempt, or why nothing can be done.
    pub message: Option<String>,
}

impl Default for StateScreen {
    fn default() -> Self {
        Self {
            step: Step::Idle,
            view: None,
            disk: 0,
            message: None,
        }
    }
}

impl StateScreen {
    /// The disks that can take a state partition.
    pub fn usable(&self) -> Vec<&DiskOffer> {
        self.view
            .iter()
            .flat_map(|v| &v.disks)
            .filter(|d| d.plan.is_some())
            .collect()
    }

    /// The disk chosen now, if any.
    pub fn chosen(&self) -> Option<&DiskOffer> {
        self.usable().get(self.disk).copied()
    }

    /// Whether this flow takes the keys now (instead of the System screen's menu).
    pub fn active(&self) -> bool {
        self.step != Step::Idle
    }

    /// The operator chose "Create state partition": read the disks first.
    pub fn begin(&mut self) -> Vec<Effect> {
        self.step = Step::Loading;
        self.message = None;
        vec![Effect::LoadState]
    }

    /// Leaves the flow (Esc, another screen).
    pub fn cancel(&mut self) {
        if self.step != Step::Creating {
            self.step = Step::Idle;
        }
    }

    pub fn on_key(&mut self, key: Key) -> Vec<Effect> {
        let n = self.usable().len().max(1);
        match (self.step, key) {
            (Step::Choosing, Key::Up | Key::Left | Key::BackTab) => {
                self.disk = (self.disk + n - 1) % n;
            }
            (Step::Choosing, Key::Down | Key::Right | Key::Tab) => self.disk = (self.disk + 1) % n,
            (Step::Choosing, Key::Enter) if self.chosen().is_some() => {
                self.step = Step::Confirming;
            }
            (Step::Choosing, Key::Char('n' | 'N')) => {
                self.step = Step::Idle;
                self.message = Some(String::from("Cancelled: no disk was touched."));
            }
            (Step::Confirming, Key::Char('y' | 'Y')) => {
                if let Some(disk) = self.chosen() {
                    let device = disk.device.clone();
                    self.step = Step::Creating;
                    self.message = Some(format!("Creating the state partition on {device}..."));
                    return vec![Effect::CreateState(CreateStateRequest {
                        disk: device.clone(),
                        confirm: device,
                        size_mib: None,
                    })];
                }
            }
            (Step::Confirming, Key::Char('n' | 'N') | Key::Enter) => {
                self.step = Step::Idle;
                self.message = Some(String::from("Cancelled: no disk was touched."));
            }
            _ => {}
        }
        Vec::new()
    }

    /// The state and the disks; while loading for the flow, it goes on to the disk choice.
    pub fn on_state(&mut self, answer: Result<StateView, ApiError>) {
        match answer {
            Ok(view) => {
                let mounted = matches!(view.status, StateStatus::Mounted { .. });
                self.view = Some(view);
                if self.step == Step::Loading {
                    self.step = Step::Idle;
                    if mounted {
                        self.message = Some(String::from(
                            "A state partition is mounted already: settings survive reboots.",
                        ));
                    } else if self.usable().is_empty() {
                        self.message = Some(String::from(
                            "No disk can take a state partition (see why above each).",
                        ));
                    } else {
                        self.disk = 0;
                        self.step = Step::Choosing;
                    }
                }
            }
            Err(e) => {
                if self.step == Step::Loading {
                    self.step = Step::Idle;
                }
                self.message = Some(format!("Cannot read the disks: {e}"));
            }
        }
    }

    /// The answer to the creation.
    pub fn on_created(&mut self, answer: Result<StateStatus, ApiError>) {
        self.step = Step::Idle;
        self.message = Some(match answer {
            Ok(StateStatus::Mounted { device, .. }) => format!(
                "State partition {device} created and mounted: settings now survive a reboot."
            ),
            Ok(other) => format!("Created, but: {}", other.console_line()),
            Err(e) => format!("Creating the state partition failed: {e}"),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use Key::*;

    fn offer(device: &str, usable: bool) -> DiskOffer {
        DiskOffer {
            device: device.into(),
            size_mib: 256,
            plan: usable.then(|| format!("This erases {device} (256 MiB), everything on it.")),
            refused: (!usable).then(|| String::from("it holds the boot medium")),
        }
    }

    fn view(status: StateStatus, disks: Vec<DiskOffer>) -> StateView {
        StateView { status, disks }
    }

    fn create(device: &str) -> Effect {
        Effect::CreateState(CreateStateRequest {
            disk: device.into(),
            confirm: device.into(),
            size_mib: None,
        })
    }

    #[test]
    fn only_a_usable_disk_and_a_yes_create_it() {
        let disks = vec![
            offer("/dev/vda", false),
            offer("/dev/vdb", true),
            offer("/dev/vdc", true),
        ];
        // Keys after the disks are read, the effects, and the step reached.
        let cases: &[(&[Key], Vec<Effect>, Step)] = &[
            (&[], vec![], Step::Choosing),
            (
                &[Enter, Char('y')],
                vec![create("/dev/vdb")],
                Step::Creating,
            ),
            (
                &[Down, Enter, Char('Y')],
                vec![create("/dev/vdc")],
                Step::Creating,
            ),
            (
                &[Up, Enter, Char('y')],
                vec![create("/dev/vdc")],
                Step::Creating,
            ),
            (
                &[Down, Down, Enter, Char('y')],
                vec![create("/dev/vdb")],
                Step::Creating,
            ),
            (&[Enter, Char('n')], vec![], Step::Idle),
            (&[Enter, Enter], vec![], Step::Idle),
            (&[Enter, Char('x')], vec![], Step::Confirming),
            (&[Char('n')], vec![], Step::Idle),
            (&[Char('y')], vec![], Step::Choosing),
        ];
        for (keys, want, step) in cases {
            let mut s = StateScreen::default();
            assert_eq!(s.begin(), [Effect::LoadState]);
            s.on_state(Ok(view(StateStatus::None, disks.clone())));
            let effects: Vec<Effect> = keys.iter().flat_map(|k| s.on_key(*k)).collect();
            assert_eq!(effects, *want, "{keys:?}");
            assert_eq!(s.step, *step, "{keys:?}");
        }
    }

    #[test]
    fn nothing_to_choose_is_said_and_answers_end_the_flow() {
        let mounted = StateStatus::Mounted {
            device: "/dev/vda3".into(),
            path: "/var/lib/keel/state".into(),
            fstype: "ext4".into(),
            boot_count: 2,
        };
        let cases = [
            (
                view(mounted.clone(), vec![offer("/dev/vdb", true)]),
                "mounted already",
            ),
            (
                view(StateStatus::None, vec![offer("/dev/vda", false)]),
                "No disk can take",
            ),
        ];
        for (v, said) in cases {
            let mut s = StateScreen::default();
            s.begin();
            s.on_state(Ok(v));
            assert_eq!(s.step, Step::Idle);
            assert!(
                s.message.as_deref().unwrap_or_default().contains(said),
                "{:?}",
                s.message
            );
        }
        let mut s = StateScreen::default();
        s.begin();
        s.on_state(Err(ApiError::Unavailable("starting".into())));
        assert_eq!(s.step, Step::Idle);
        s.on_created(Ok(mounted));
        assert_eq!(
            s.message.as_deref(),
            Some("State partition /dev/vda3 created and mounted: settings now survive a reboot.")
        );
        s.on_created(Err(ApiError::Conflict("/dev/vdb is in use".into())));
        assert_eq!(
            s.message.as_deref(),
            Some("Creating the state partition failed: /dev/vdb is in use")
        );
    }
}
