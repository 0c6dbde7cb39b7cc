# Minimal device set for the testbed's QEMU (x86_64): q35 with intel-iommu, the vfio-user
# client, virtio-net for the peer guest, PCIe root ports, a second ISA serial port for
# the guest's result channel. Copied into configs/devices/x86_64-softmmu/ before configure.
CONFIG_Q35=y
CONFIG_PCI_DEVICES=n
CONFIG_VFIO_PCI=y
CONFIG_VFIO_USER=y
CONFIG_VTD=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_NET=y
CONFIG_PCIE_PORT=y
CONFIG_SERIAL_ISA=y
# A host folder in the guest (9p over virtio, `/host`) and virtio-serial ports for the
# guest agent of `testbed exec`.
CONFIG_VIRTIO_9P=y
CONFIG_VIRTIO_SERIAL=y
