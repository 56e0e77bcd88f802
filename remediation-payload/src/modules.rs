//! Kernel module selection: resolve the modules the agent needs, with their dependencies, from
//! `modules.dep`, in load order (dependencies first).
use std::collections::{BTreeMap, BTreeSet};

/// Modules the payload cannot work without (QEMU's and the commonest real hardware's NIC and
/// storage, and NTFS). A missing one is an error.
pub const REQUIRED: &[&str] = &[
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "ahci",
    "sd_mod",
    "nvme",
    "ntfs3",
    "efivarfs",
];

/// Real-hardware drivers; missing ones are reported but not fatal.
pub const HARDWARE: &[&str] = &[
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "r8169",
    "mlx5_core",
    "hv_netvsc",
    "vmxnet3",
    "atlantic",
    "vmd",
    "megaraid_sas",
    "mpt3sas",
    "smartpqi",
    "hpsa",
    "vmw_pvscsi",
    "hv_storvsc",
    "uas",
    "usb_storage",
    "xhci_pci",
    "xhci_hcd",
];

/// Module name as the kernel sees it: file stem, `-` and `_` equivalent.
pub fn canonical(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Parsed `modules.dep`: name -> (relative path, direct dependencies' names).
#[derive(Debug, Default)]
pub struct ModuleDep {
    pub modules: BTreeMap<String, (String, Vec<String>)>,
}

impl ModuleDep {
    pub fn parse(text: &str) -> ModuleDep {
        let mut modules = BTreeMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(canonical).collect();
            modules.insert(canonical(path), (path.trim().to_string(), deps));
        }
        ModuleDep { modules }
    }

    /// The closure of `wanted` in load order (dependencies before dependants). Names that are
    /// neither in modules.dep nor in `builtin` are returned as missing.
    pub fn resolve(
        &self,
        wanted: &[&str],
        builtin: &BTreeSet<String>,
    ) -> (Vec<String>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut missing = Vec::new();
        fn visit(m: &ModuleDep, name: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
            if !seen.insert(name.to_string()) {
                return;
            }
            if let Some((_, deps)) = m.modules.get(name) {
                for d in deps {
                    visit(m, d, seen, order);
                }
                order.push(name.to_string());
            }
        }
        for w in wanted {
            let c = canonical(w);
            if self.modules.contains_key(&c) {
                visit(self, &c, &mut seen, &mut order);
            } else if !builtin.contains(&c) {
                missing.push(c);
            }
        }
        (order, missing)
    }

    pub fn path(&self, name: &str) -> Option<&str> {
        self.modules.get(name).map(|(p, _)| p.as_str())
    }
}

/// Names from `modules.builtin` (built into the kernel: nothing to load).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(canonical)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_order() {
        let dep = ModuleDep::parse(
            "kernel/fs/ntfs3/ntfs3.ko.xz:\n\
             kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz\n\
             kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n\
             kernel/net/core/failover.ko.xz:\n\
             kernel/drivers/md/dm-crypt.ko.xz: kernel/drivers/md/dm-mod.ko.xz\n\
             kernel/drivers/md/dm-mod.ko.xz:\n",
        );
        let builtin = parse_builtin("kernel/drivers/block/virtio_blk.ko\n");
        let (order, missing) = dep.resolve(
            &["virtio-net", "ntfs3", "dm_crypt", "virtio_blk", "nope"],
            &builtin,
        );
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio_net",
                "ntfs3",
                "dm_mod",
                "dm_crypt"
            ]
        );
        assert_eq!(missing, ["nope"]);
        assert_eq!(dep.path("dm_mod"), Some("kernel/drivers/md/dm-mod.ko.xz"));
    }
}
