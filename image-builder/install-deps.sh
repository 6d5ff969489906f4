#!/usr/bin/env bash
# Installs the Debian packages Keel's build and tests need, only if some are missing.
set -euo pipefail

packages=(qemu-system-x86 ovmf squashfs-tools cpio zstd xorriso dpkg-dev kmod)
# Boot media (docs/boot-media.md): GRUB for BIOS and UEFI, FAT and ext4 tools, sfdisk, iPXE ROMs.
packages+=(grub-pc-bin grub-efi-amd64-bin grub-common mtools dosfstools e2fsprogs fdisk ipxe-qemu)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "installed" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
