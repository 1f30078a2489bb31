package machineconfig

import (
	cfgdoc "github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/types/block"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	blockres "github.com/siderolabs/talos/pkg/machinery/resources/block"
)

// EncryptedVolumes are the system volumes every labfleet config encrypts:
// STATE holds the node's machine config and identity, EPHEMERAL the
// workloads' data (patient data on a lab node).
var EncryptedVolumes = []string{constants.StatePartitionLabel, constants.EphemeralPartitionLabel}

// tpmEncryption is Talos v1.14's own form of "sealed to this machine's TPM,
// only under Secure Boot": LUKS2 with one key slot whose key the TPM seals
// to PCR 7 (Secure Boot state and keys) and the signed PCR 11 policy of our
// UKIs; checkSecurebootStatusOnEnroll makes Talos refuse to enroll (and so
// to format the volume) when Secure Boot is off or in setup mode.
//
// EPHEMERAL is also locked to STATE (lockToState): its key is bound to a
// salt kept on STATE, so a disk whose STATE was replaced does not open
// EPHEMERAL, as Talos recommends for TPM-encrypted non-STATE volumes.
func tpmEncryption(volume string) block.EncryptionSpec {
	key := block.EncryptionKey{
		KeySlot: 0,
		KeyTPM:  &block.EncryptionKeyTPM{TPMCheckSecurebootStatusOnEnroll: new(true)},
	}

	if volume != constants.StatePartitionLabel {
		key.KeyLockToSTATE = new(true)
	}

	return block.EncryptionSpec{
		EncryptionProvider: blockres.EncryptionProviderLUKS2,
		EncryptionKeys:     []block.EncryptionKey{key},
	}
}

// encryptedVolumes sets TPM encryption on the STATE and EPHEMERAL
// VolumeConfig documents of docs (machinery generates one for EPHEMERAL),
// adding the ones that are missing, in EncryptedVolumes order.
func encryptedVolumes(docs []cfgdoc.Document) []cfgdoc.Document {
	for _, name := range EncryptedVolumes {
		found := false

		for _, d := range docs {
			if vc, ok := d.(*block.VolumeConfigV1Alpha1); ok && vc.MetaName == name {
				vc.EncryptionSpec = tpmEncryption(name)
				found = true
			}
		}

		if !found {
			vc := block.NewVolumeConfigV1Alpha1()
			vc.MetaName = name
			vc.EncryptionSpec = tpmEncryption(name)
			docs = append(docs, vc)
		}
	}

	return docs
}
