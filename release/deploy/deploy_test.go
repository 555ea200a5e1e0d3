// Package deploy holds the deployment manifests; this test checks them with
// kube-apiserver's own EncryptionConfiguration decoding and validation, and
// checks that the static pod keeps its least-privilege settings and serves
// the socket the configurations name.
package deploy

import (
	"encoding/json"
	"os"
	"path"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/apis/apiserver/install"
	"k8s.io/apiserver/pkg/apis/apiserver/validation"
)

const socket = "/var/run/kmsplugin/kms.sock"

func TestEncryptionConfigurations(t *testing.T) {
	scheme := runtime.NewScheme()
	install.Install(scheme)
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDecoder()
	for file, apiVersion := range map[string]string{
		"encryption-config-v2.yaml": "v2",
		"encryption-config-v1.yaml": "v1",
	} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := decoder.Decode(b, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		c, ok := obj.(*apiserver.EncryptionConfiguration)
		if !ok {
			t.Fatalf("%s: decoded a %T", file, obj)
		}
		if errs := validation.ValidateEncryptionConfiguration(c, false); len(errs) > 0 {
			t.Errorf("%s: %v", file, errs.ToAggregate())
		}
		kms := c.Resources[0].Providers[0].KMS
		if kms == nil || kms.APIVersion != apiVersion || kms.Endpoint != "unix://"+socket {
			t.Errorf("%s: first provider %+v, want KMS %s at unix://%s", file, kms, apiVersion, socket)
		}
	}
}

// pod is the part of a Pod this test looks at.
type pod struct {
	Spec struct {
		HostNetwork     bool `json:"hostNetwork"`
		SecurityContext struct {
			RunAsNonRoot   bool `json:"runAsNonRoot"`
			RunAsUser      int  `json:"runAsUser"`
			RunAsGroup     int  `json:"runAsGroup"`
			SeccompProfile struct {
				Type string `json:"type"`
			} `json:"seccompProfile"`
		} `json:"securityContext"`
		Containers []struct {
			Image           string   `json:"image"`
			Args            []string `json:"args"`
			SecurityContext struct {
				AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
				ReadOnlyRootFilesystem   bool  `json:"readOnlyRootFilesystem"`
				Capabilities             struct {
					Drop []string `json:"drop"`
					Add  []string `json:"add"`
				} `json:"capabilities"`
			} `json:"securityContext"`
			VolumeMounts []struct {
				Name      string `json:"name"`
				MountPath string `json:"mountPath"`
				ReadOnly  bool   `json:"readOnly"`
			} `json:"volumeMounts"`
		} `json:"containers"`
		Volumes []struct {
			Name     string `json:"name"`
			HostPath struct {
				Path string `json:"path"`
			} `json:"hostPath"`
		} `json:"volumes"`
	} `json:"spec"`
}

func TestStaticPod(t *testing.T) {
	b, err := os.ReadFile("kms-static-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.ToJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	var p pod
	if err := json.Unmarshal(j, &p); err != nil {
		t.Fatal(err)
	}
	sc := p.Spec.SecurityContext
	if !sc.RunAsNonRoot || sc.RunAsUser != 65532 || sc.RunAsGroup != 65532 || sc.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("pod securityContext %+v", sc)
	}
	if len(p.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(p.Spec.Containers))
	}
	c := p.Spec.Containers[0]
	csc := c.SecurityContext
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation || !csc.ReadOnlyRootFilesystem ||
		!slices.Equal(csc.Capabilities.Drop, []string{"ALL"}) || len(csc.Capabilities.Add) > 0 {
		t.Errorf("container securityContext %+v", csc)
	}
	if !strings.Contains(c.Image, "@sha256:") {
		t.Errorf("image %q is not pinned by digest", c.Image)
	}
	if !slices.Contains(c.Args, "--endpoint=unix://"+socket) {
		t.Errorf("args %v do not serve %s", c.Args, socket)
	}
	// The socket directory the pod mounts is the host directory kube-apiserver shares.
	hostPaths := map[string]string{}
	for _, v := range p.Spec.Volumes {
		hostPaths[v.Name] = v.HostPath.Path
	}
	for _, m := range c.VolumeMounts {
		if m.MountPath == path.Dir(socket) && hostPaths[m.Name] != path.Dir(socket) {
			t.Errorf("socket directory comes from host %q, want %s", hostPaths[m.Name], path.Dir(socket))
		}
		if m.MountPath == "/etc/kms" && !m.ReadOnly {
			t.Error("the KEK directory is mounted writable")
		}
	}
}
