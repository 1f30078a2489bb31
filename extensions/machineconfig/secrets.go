package machineconfig

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	cfgdoc "github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
	"gopkg.in/yaml.v3"
)

// ErrSecretInConfig marks a configuration that holds key material and so
// must not be embedded in an image.
var ErrSecretInConfig = errors.New("machine config holds key material")

// secretFields are field names that carry key material or bearer secrets in
// Talos documents (CA keys, service account keys, bootstrap and join
// tokens, etcd encryption secrets, discovery secrets, static LUKS
// passphrases, WireGuard keys). Compared case-insensitively.
var secretFields = []string{
	"key", "privatekey", "token", "secret", "clustersecret", "bootstraptoken",
	"secretboxencryptionsecret", "aescbcencryptionsecret", "passphrase",
}

// base64Run finds base64 words long enough to hide a key (a PEM private key
// base64-encoded, as in v1alpha1 fields or a Kubernetes Secret's data).
var base64Run = regexp.MustCompile(`[A-Za-z0-9+/]{60,}={0,2}`)

// CheckNoSecrets refuses a machine configuration that holds key material:
// any v1alpha1 document (it carries machine.ca.key, the tokens and the
// cluster secrets), any field machinery redacts as a secret, any field
// named like a key or secret with a value, and any value that is or
// base64-encodes a PEM private key (inline manifests included). The error
// wraps ErrSecretInConfig and names every offending document (kind and
// name) and field path, e.g. "v1alpha1: machine.ca.key".
func CheckNoSecrets(data []byte) error {
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return fmt.Errorf("parsing machine config: %w", err)
	}

	var problems []string

	for _, d := range cfg.Documents() {
		found, err := secretPaths(d)
		if err != nil {
			return err
		}

		what := docLabel(d)

		if _, legacy := d.(*v1alpha1.Config); legacy && len(found) == 0 {
			found = []string{"(the v1alpha1 document itself: it is where a node's keys and tokens live)"}
		}

		for _, f := range found {
			problems = append(problems, what+": "+f)
		}
	}

	if len(problems) == 0 {
		return nil
	}

	return fmt.Errorf("%w: %s; an image may embed only a bootstrap config without secrets "+
		"(no v1alpha1 document; see docs/contracts.md): nodes receive their config after boot",
		ErrSecretInConfig, strings.Join(problems, ", "))
}

func docLabel(d cfgdoc.Document) string {
	if n, ok := d.(cfgdoc.NamedDocument); ok && n.Name() != "" {
		return d.Kind() + " " + strconv.Quote(n.Name())
	}

	return d.Kind()
}

// secretPaths returns the field paths of d that hold secrets, sorted.
func secretPaths(d cfgdoc.Document) ([]string, error) {
	root, err := encodeNode(d)
	if err != nil {
		return nil, err
	}

	found := map[string]bool{}

	walk(root, "", func(path, field string, v *yaml.Node) {
		if v.Kind != yaml.ScalarNode || v.Value == "" {
			return
		}

		if field != "" && slices.Contains(secretFields, strings.ToLower(field)) {
			found[path] = true
		}

		if holdsPrivateKey(v.Value) {
			found[path] = true
		}
	})

	// What machinery itself redacts is secret by definition.
	if sd, ok := d.Clone().(cfgdoc.SecretDocument); ok {
		sd.Redact("REDACTED")

		redacted, err := encodeNode(sd)
		if err != nil {
			return nil, err
		}

		values := map[string]string{}

		walk(root, "", func(path, _ string, v *yaml.Node) { values[path] = v.Value })
		walk(redacted, "", func(path, _ string, v *yaml.Node) {
			if v.Kind == yaml.ScalarNode && values[path] != v.Value && values[path] != "" {
				found[path] = true
			}
		})
	}

	out := make([]string, 0, len(found))
	for p := range found {
		out = append(out, p)
	}

	slices.Sort(out)

	return out, nil
}

func encodeNode(d any) (*yaml.Node, error) {
	b, err := encoder.NewEncoder(d, encoder.WithComments(encoder.CommentsDisabled)).Encode()
	if err != nil {
		return nil, fmt.Errorf("encoding config document: %w", err)
	}

	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return nil, fmt.Errorf("decoding config document: %w", err)
	}

	return &n, nil
}

// walk calls fn for every node below n with its dotted path ("machine.ca.key",
// "keys[0].secret") and the name of the field holding it ("" in lists).
func walk(n *yaml.Node, path string, fn func(path, field string, v *yaml.Node)) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			walk(c, path, fn)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i].Value, n.Content[i+1]

			p := k
			if path != "" {
				p = path + "." + k
			}

			fn(p, k, v)
			walk(v, p, fn)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			fn(p, "", c)
			walk(c, p, fn)
		}
	}
}

var pemPrivateKey = []byte("PRIVATE KEY-----")

// holdsPrivateKey reports whether s contains a PEM private key, plainly or
// base64-encoded (whole or as one word of a longer text).
func holdsPrivateKey(s string) bool {
	if strings.Contains(s, string(pemPrivateKey)) {
		return true
	}

	for _, w := range base64Run.FindAllString(s, -1) {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding} {
			if b, err := enc.DecodeString(w); err == nil && bytes.Contains(b, pemPrivateKey) {
				return true
			}
		}
	}

	return false
}
