package addons

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// Object is one decoded document of a rendered manifest.
type Object struct {
	// Source is the template that produced it ("cilium/templates/agent.yaml").
	Source string
	// GVK is its group, version and kind.
	GVK schema.GroupVersionKind
	// Namespace and Name identify it.
	Namespace, Name string
	// Typed is the Kubernetes API type it decoded into, or nil for a custom
	// resource (then Custom is set).
	Typed runtime.Object
	// Custom holds a custom resource; its CRD must be among the rendered
	// objects (see CheckCustomResources).
	Custom *unstructured.Unstructured
}

// Label names the object for error messages: "template (Kind ns/name)".
func (o Object) Label() string {
	id := o.Name
	if o.Namespace != "" {
		id = o.Namespace + "/" + o.Name
	}

	return fmt.Sprintf("%s (%s %s)", o.Source, o.GVK.Kind, id)
}

var (
	scheme = func() *runtime.Scheme {
		s := runtime.NewScheme()
		if err := clientgoscheme.AddToScheme(s); err != nil {
			panic(err)
		}

		if err := apiextensionsv1.AddToScheme(s); err != nil {
			panic(err)
		}

		return s
	}()
	// Strict: an unknown or duplicated field is an error, so a typo in a
	// template or values file fails the build instead of being dropped.
	decoder = serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()

	docSepRE = regexp.MustCompile(`(?m)^---[ \t]*$`)
	sourceRE = regexp.MustCompile(`(?m)^# Source: (.+)$`)
)

// SplitDocuments splits a multi-document YAML stream, dropping empty ones.
func SplitDocuments(manifest string) []string {
	var out []string

	for _, d := range docSepRE.Split(manifest, -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			out = append(out, d)
		}
	}

	return out
}

func stripComments(doc string) string {
	var b strings.Builder

	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}

	return b.String()
}

// DecodeManifest decodes every document into Kubernetes API types; errors
// name the add-on and template.
func DecodeManifest(addon, manifest string) ([]Object, error) {
	var (
		objs []Object
		errs []error
	)

	for i, doc := range SplitDocuments(manifest) {
		src := fmt.Sprintf("document %d", i)
		if m := sourceRE.FindStringSubmatch(doc); m != nil {
			src = strings.TrimSpace(m[1])
		}

		obj, gvk, err := decoder.Decode([]byte(doc), nil, nil)

		switch {
		case err == nil:
			acc, aerr := meta.Accessor(obj)
			if aerr != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", addon, src, aerr))

				continue
			}

			objs = append(objs, Object{Source: src, GVK: *gvk, Namespace: acc.GetNamespace(), Name: acc.GetName(), Typed: obj})
		case runtime.IsNotRegisteredError(err):
			u := &unstructured.Unstructured{}

			js, jerr := yaml.YAMLToJSON([]byte(doc))
			if jerr != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", addon, src, jerr))

				continue
			}

			if uerr := u.UnmarshalJSON(js); uerr != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", addon, src, uerr))

				continue
			}

			objs = append(objs, Object{Source: src, GVK: u.GroupVersionKind(), Namespace: u.GetNamespace(), Name: u.GetName(), Custom: u})
		default:
			errs = append(errs, fmt.Errorf("%s: %s: not a valid Kubernetes object: %w", addon, src, err))
		}
	}

	for _, o := range objs {
		if o.Name == "" {
			errs = append(errs, fmt.Errorf("%s: %s: object has no metadata.name", addon, o.Label()))
		}
	}

	return objs, errors.Join(errs...)
}

func (r *Rendered) decode() error {
	objs, err := DecodeManifest(r.Addon.Name, r.Manifest)
	if err != nil {
		return err
	}

	r.Objects = objs

	for _, o := range objs {
		spec := podSpec(o.Typed)
		if spec == nil {
			continue
		}

		for _, group := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
			for _, c := range group {
				r.Images = append(r.Images, ImageUse{Addon: r.Addon.Name, Manifest: o.Label(), Container: c.Name, Ref: c.Image})
			}
		}

		for _, c := range spec.EphemeralContainers {
			r.Images = append(r.Images, ImageUse{Addon: r.Addon.Name, Manifest: o.Label(), Container: c.Name, Ref: c.Image})
		}
	}

	return nil
}

func podSpec(obj runtime.Object) *corev1.PodSpec {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &o.Spec
	case *appsv1.Deployment:
		return &o.Spec.Template.Spec
	case *appsv1.DaemonSet:
		return &o.Spec.Template.Spec
	case *appsv1.StatefulSet:
		return &o.Spec.Template.Spec
	case *appsv1.ReplicaSet:
		return &o.Spec.Template.Spec
	case *batchv1.Job:
		return &o.Spec.Template.Spec
	case *batchv1.CronJob:
		return &o.Spec.JobTemplate.Spec.Template.Spec
	case *corev1.ReplicationController:
		if o.Spec.Template != nil {
			return &o.Spec.Template.Spec
		}
	}

	return nil
}

// CheckCustomResources fails when a custom resource's kind is defined by no
// CustomResourceDefinition among the rendered add-ons: such an object would
// be rejected when Talos applies the inline manifests.
func CheckCustomResources(rendered []*Rendered) error {
	defined := map[schema.GroupVersionKind]bool{}

	for _, r := range rendered {
		for _, o := range r.Objects {
			crd, ok := o.Typed.(*apiextensionsv1.CustomResourceDefinition)
			if !ok {
				continue
			}

			for _, v := range crd.Spec.Versions {
				defined[schema.GroupVersionKind{Group: crd.Spec.Group, Version: v.Name, Kind: crd.Spec.Names.Kind}] = true
			}
		}
	}

	var errs []error

	for _, r := range rendered {
		for _, o := range r.Objects {
			if o.Custom != nil && !defined[o.GVK] {
				errs = append(errs, fmt.Errorf("%s: %s: kind %s is neither a Kubernetes API type nor defined by a rendered CustomResourceDefinition", r.Addon.Name, o.Label(), o.GVK))
			}
		}
	}

	return errors.Join(errs...)
}
