//! x86_64 specifics: the guest physical layout (`layout`), the boot CPU's initial state (`regs`,
//! `gdt`), the Linux zero page with its e820 map (`boot`) and the local APIC wiring (`lapic`).

pub mod boot;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod regs;
