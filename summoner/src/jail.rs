//! The jail as the summoner uses it: the `[jail]` config and the daemon's half are
//! `dust_jail::host`; this rewrites a VM's config to the paths its worker sees inside.

use std::io;
use std::path::{Path, PathBuf};

pub use dust_jail::host::{Jail, JailConfig, JailConfigError, VmFiles, VmJail, VSOCK};
use vmm::{SerialConfig, VmConfig};

/// Make `vm`'s jail (per-VM root, cgroups; `memory_limit_mib` overrides guest memory +
/// overhead) and rewrite `config` to the paths its worker will see; returns the config, the
/// jail (release it once the worker is gone) and the vsock socket as the summoner reaches it.
pub fn prepare(
    jail: &Jail,
    vm: &str,
    mut config: VmConfig,
    memory_limit_mib: Option<u32>,
    snapshot: Option<dust_jail::SnapshotMount>,
) -> io::Result<(VmConfig, VmJail, PathBuf)> {
    let files = VmFiles {
        image: config.image.clone(),
        initrd: config.initrd.clone(),
        serial: match &config.serial {
            SerialConfig::File(p) => Some(p.clone()),
            _ => None,
        },
        snapshot,
        memory_mib: config.memory_mib,
        memory_limit_mib,
    };
    let vm_jail = jail.prepare(vm, files)?;
    let mut vsock = config
        .vsock
        .as_ref()
        .map(|v| v.uds.clone())
        .unwrap_or_default();
    if vm_jail.own_root() {
        config.image = dust_jail::IMAGE.into();
        if config.initrd.is_some() {
            config.initrd = Some(dust_jail::INITRD.into());
        }
        if let SerialConfig::File(_) = &config.serial {
            config.serial = SerialConfig::File(dust_jail::SERIAL.into());
        }
        if let (Some(v), Some(host)) = (config.vsock.as_mut(), vm_jail.vsock()) {
            v.uds = Path::new(VSOCK).to_path_buf();
            vsock = host;
        }
    }
    Ok((config, vm_jail, vsock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_table_parses_with_defaults_and_refuses_root() {
        let f: crate::FileConfig =
            toml::from_str("[jail]\nuid = 1234\ncpu_quota_percent = 50\n").unwrap();
        assert_eq!(f.jail.uid, 1234);
        assert_eq!(f.jail.gid, 65534);
        assert_eq!(f.jail.cpu_quota_percent, Some(50));
        assert!(f.jail.enabled);
        assert_eq!(f.jail.validate(), Ok(()));
        let root = JailConfig {
            uid: 0,
            ..JailConfig::default()
        };
        assert_eq!(root.validate(), Err(JailConfigError::Root));
        assert!(toml::from_str::<crate::FileConfig>("[jail]\nuser = 3\n").is_err());
        assert_eq!(
            toml::from_str::<crate::FileConfig>("").unwrap().jail,
            JailConfig::default()
        );
    }
}
