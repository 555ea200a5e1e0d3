package drills

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/src/transport"
	"github.com/cmdkms/kms/tools/dev/bench/load"
)

// Random, garbled, spliced and oversized ciphertexts and request fields at
// full rate, with valid calls mixed in: the daemon does not crash, its
// memory does not grow with the number of calls, every garbage call gets
// an error code (aescbc excepted: see below), and no call ever answers
// with another object's plaintext.
func TestGarbageInput(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"aesgcm", "aescbc"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			garbageDrill(t, mode)
		})
	}
}

// request is one garbage call and what it was made from (-1: nothing).
type request struct {
	kind string
	src  int
	// garbled: the ciphertext itself was changed, which a CBC format,
	// having no MAC, cannot always detect; sent is what was sent.
	garbled bool
	sent    []byte
	// raw: the request is not valid protobuf, which gRPC itself refuses,
	// with Internal, before the daemon sees it.
	raw  bool
	call func(context.Context, *load.Client) ([]byte, error)
}

func garbageDrill(t *testing.T, mode string) {
	dir, sock := shortSock(t)
	ring := dir + "/keyring"
	writeKeyring(t, ring, testbin.NewKey())
	d := startKMS(t, sock, "--command", "cat "+ring, "--mode", mode)
	ctx := context.Background()

	var objs store
	if r := load.Run(ctx, 8, 64, func(ctx context.Context, _, seq int) error { return write(ctx, d.Client, &objs, seq) }); r.Failed() > 0 {
		t.Fatal(r.Failures)
	}
	objects := objs.all()
	owner := map[string]int{} // plaintext -> object
	for i, o := range objects {
		owner[string(o.Plain)] = i
	}

	var (
		mu       sync.Mutex
		problems []string
		kinds    = map[string]int{}
		answered = map[string]int{} // garbled CBC ciphertexts that decrypted, by kind
	)
	problem := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(problems) < 10 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	op := func(ctx context.Context, _, seq int) error {
		if seq%4 == 0 {
			// A valid call in the flood must still get exactly its own answer.
			return read(ctx, d.Client, objects[seq/4%len(objects)])
		}
		var seed [32]byte
		binary.LittleEndian.PutUint64(seed[:], uint64(seq))
		src := rand.NewChaCha8(seed)
		req := garbageRequest(rand.New(src), src, objects)
		p, err := req.call(ctx, d.Client)
		mu.Lock()
		kinds[req.kind]++
		mu.Unlock()
		switch code := status.Code(err); {
		case err == nil:
			if i, ok := owner[string(p)]; ok && i != req.src {
				problem("%s of object %d answered with object %d's plaintext", req.kind, req.src, i)
			}
			// CBC has no MAC: a changed IV or body can decrypt to changed
			// bytes (why aesgcm is the default). That holds for the 2018
			// format too, which every mode must keep reading. aesgcm
			// ciphertexts and bad fields must be refused.
			if !req.garbled || !isCBC(req.sent) {
				problem("%s of object %d got an answer, not an error", req.kind, req.src)
			}
			mu.Lock()
			answered[req.kind]++
			mu.Unlock()
		case code == codes.ResourceExhausted && overLimit(err):
		case code == codes.Internal && req.raw && strings.Contains(status.Convert(err).Message(), "unmarshal"):
		case code != codes.InvalidArgument && code != codes.FailedPrecondition:
			problem("%s: %v", req.kind, err)
		}
		return nil
	}

	n := scale(10000, 1000000)
	rss := func() int64 {
		p, err := load.ReadProc(d.Cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		return p.RSS
	}
	// Memory is compared between the two halves, after the first has set
	// the heap's working size: growth in the second is what calls leak.
	var results [2]*load.Result
	var after [2]int64
	for half := range results {
		results[half] = load.Run(ctx, 32, n/2, func(ctx context.Context, c, seq int) error { return op(ctx, c, seq+half*n/2) })
		after[half] = rss()
	}
	for half, r := range results {
		if r.Requests != n/2 || r.Failed() > 0 {
			t.Fatalf("half %d: %d calls, valid calls failed: %v", half, r.Requests, r.Failures)
		}
	}
	if len(problems) > 0 {
		t.Fatalf("%s:\n%s", mode, strings.Join(problems, "\n"))
	}
	if _, err := d.V2.Status(ctx, &v2.StatusRequest{}); err != nil {
		t.Fatalf("daemon no longer serves: %v\n%s", err, d.Stderr())
	}
	if strings.Contains(d.Stderr(), "panic") {
		t.Fatalf("the daemon logged a panic:\n%s", d.Stderr())
	}
	const slack = 32 << 20
	if after[1] > after[0]+after[0]/4+slack {
		t.Fatalf("RSS grew from %d MiB to %d MiB over the second %d calls", after[0]>>20, after[1]>>20, n/2)
	}
	t.Logf("%s: %d calls (%d garbage: %v); CBC ciphertexts garbled yet answered (no MAC): %v; RSS %d MiB then %d MiB",
		mode, n, n*3/4, kinds, answered, after[0]>>20, after[1]>>20)
}

// garbageRequest makes one bad call from rng: a garbled form of a valid
// ciphertext, random bytes, or bad request fields.
func garbageRequest(rng *rand.Rand, src *rand.ChaCha8, objects []object) request {
	i := rng.IntN(len(objects))
	o := objects[i]
	ct := o.V1
	if o.V2 != nil {
		ct = o.V2.Ciphertext
	}
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		src.Read(b)
		return b
	}
	var kind string
	var bad []byte
	switch k := rng.IntN(100); {
	case k < 15:
		kind, bad = "random", randBytes(1+rng.IntN(2048))
		if rng.IntN(2) == 0 {
			copy(bad, ct[:min(len(bad), 14)]) // past the header check
		}
	case k < 30:
		kind, bad = "truncated", bytes.Clone(ct[:1+rng.IntN(len(ct)-1)])
	case k < 50:
		kind, bad = "bit-flipped", bytes.Clone(ct)
		for range 1 + rng.IntN(4) {
			bad[rng.IntN(len(bad))] ^= byte(1 + rng.IntN(255))
		}
	case k < 58:
		kind, bad = "extended", append(bytes.Clone(ct), randBytes(1+rng.IntN(64))...)
	case k < 70:
		// Another object's tail on this one's head: the same header and
		// key id, then at least the first byte in which this one's nonce
		// or IV differs from the other's, then a body that belongs
		// elsewhere. (Cut before that byte, it would be the other object.)
		other := objects[(i+1+rng.IntN(len(objects)-1))%len(objects)]
		oct := other.V1
		if other.V2 != nil {
			oct = other.V2.Ciphertext
		}
		n := min(len(ct), len(oct))
		j := 0
		for j < n-1 && ct[j] == oct[j] {
			j++
		}
		cut := j + 1 + rng.IntN(max(n-j-1, 1))
		kind, bad = "spliced", append(bytes.Clone(ct[:cut]), oct[cut:]...)
	case k < 75:
		kind, bad = "legacy-random", append([]byte(":ck:aescbc:v1:"), randBytes(16*(2+rng.IntN(8)))...)
	case k < 80:
		kind, bad = "oversized", append(bytes.Clone(ct[:30]), randBytes(codec.MaxCiphertext+1+rng.IntN(256<<10))...)
	case k < 81:
		// The transport's message limit answers before the daemon does.
		kind, bad = "beyond-message-limit", randBytes(transport.MaxMessage+1)
	case k < 86:
		return badFields(rng, i, o, randBytes)
	case k < 92:
		return rawFrame(rng, i, o, randBytes)
	default:
		return badEncrypt(rng, randBytes)
	}
	// Flips can cancel out and a splice can take only bytes both objects
	// share: what is left is the valid ciphertext, not garbage.
	if bytes.Equal(bad, ct) {
		bad[rng.IntN(len(bad))] ^= 1
	}
	if o.V2 != nil {
		return request{kind: kind, src: i, garbled: true, sent: bad, call: func(ctx context.Context, c *load.Client) ([]byte, error) {
			r, err := c.V2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: bad, KeyId: o.V2.KeyId, Uid: "drill"})
			return r.GetPlaintext(), err
		}}
	}
	return request{kind: kind, src: i, garbled: true, sent: bad, call: func(ctx context.Context, c *load.Client) ([]byte, error) {
		r, err := c.V1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: load.V1APIVersion, Cipher: bad})
		return r.GetPlain(), err
	}}
}

// badFields sends a valid ciphertext with a wrong version, key_id or junk
// in fields the daemon ignores.
func badFields(rng *rand.Rand, i int, o object, randBytes func(int) []byte) request {
	// A Go client cannot send invalid UTF-8 in string fields; rawFrame does.
	randText := func(n int) string { return strings.ToValidUTF8(string(randBytes(n)), "\uFFFD") }
	if o.V1 != nil {
		versions := []string{"", "v1", "v2", "v1beta2", randText(rng.IntN(300)), strings.Repeat("v1beta1", 10000)}
		v := versions[rng.IntN(len(versions))]
		return request{kind: "v1-bad-version", src: i, call: func(ctx context.Context, c *load.Client) ([]byte, error) {
			r, err := c.V1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: v, Cipher: o.V1})
			return r.GetPlain(), err
		}}
	}
	ids := []string{"", "kek1-" + hex.EncodeToString(randBytes(16)), randText(rng.IntN(100)), strings.Repeat("k", 64<<10), o.V2.KeyId + "x"}
	id := ids[rng.IntN(len(ids))]
	annotations := map[string][]byte{}
	for range rng.IntN(8) {
		annotations[randText(1+rng.IntN(64))] = randBytes(rng.IntN(4096))
	}
	return request{kind: "v2-bad-key-id", src: i, call: func(ctx context.Context, c *load.Client) ([]byte, error) {
		r, err := c.V2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: o.V2.Ciphertext, KeyId: id, Uid: randText(rng.IntN(64)), Annotations: annotations})
		return r.GetPlaintext(), err
	}}
}

// rawFrame sends a Decrypt whose bytes are not a valid request: random
// bytes, or well-formed protobuf with invalid UTF-8 in a string field,
// which no Go client can send but any other client can.
func rawFrame(rng *rand.Rand, i int, o object, randBytes func(int) []byte) request {
	method, frame := "/v1beta1.KeyManagementService/Decrypt", randBytes(1+rng.IntN(512))
	if o.V2 != nil {
		method = "/v2.KeyManagementService/Decrypt"
	}
	kind := "raw-random"
	if rng.IntN(2) == 0 {
		kind = "raw-invalid-utf8"
		if o.V1 != nil {
			frame = protowire.AppendTag(nil, 1, protowire.BytesType) // version
			frame = protowire.AppendBytes(frame, []byte("v1beta1\xff"))
			frame = protowire.AppendTag(frame, 2, protowire.BytesType) // cipher
			frame = protowire.AppendBytes(frame, o.V1)
		} else {
			frame = protowire.AppendTag(nil, 1, protowire.BytesType) // ciphertext
			frame = protowire.AppendBytes(frame, o.V2.Ciphertext)
			frame = protowire.AppendTag(frame, 3, protowire.BytesType) // key_id
			frame = protowire.AppendBytes(frame, []byte(o.V2.KeyId+"\xff"))
		}
	}
	return request{kind: kind, src: i, raw: true, call: func(ctx context.Context, c *load.Client) ([]byte, error) {
		var out []byte
		if err := c.Conn.Invoke(ctx, method, &frame, &out, grpc.ForceCodec(rawCodec{})); err != nil {
			return nil, err
		}
		if o.V1 != nil {
			var r v1beta1.DecryptResponse
			return r.Plain, proto.Unmarshal(out, &r)
		}
		var r v2.DecryptResponse
		return r.Plaintext, proto.Unmarshal(out, &r)
	}}
}

// overLimit says whether err is gRPC refusing a request larger than the
// transport's limit, and the request was indeed larger: requests within
// the limit must reach the daemon.
func overLimit(err error) bool {
	m := overLimitRE.FindStringSubmatch(status.Convert(err).Message())
	if m == nil {
		return false
	}
	size, _ := strconv.Atoi(m[1])
	limit, _ := strconv.Atoi(m[2])
	return limit == transport.MaxMessage && size > limit
}

var overLimitRE = regexp.MustCompile(`larger than max \((\d+) vs\. (\d+)\)`)

func isCBC(ct []byte) bool {
	return bytes.HasPrefix(ct, []byte(":ck:aescbc:v1:")) || bytes.HasPrefix(ct, []byte(":ck:v2:aescbc:"))
}

// rawCodec sends and receives message bytes as they are. Its name makes
// the content type application/grpc+proto, so the server decodes them
// as it decodes any request.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *v.(*[]byte) = bytes.Clone(data); return nil }
func (rawCodec) Name() string                       { return "proto" }

// badEncrypt asks to encrypt nothing, too much, or with a wrong version.
func badEncrypt(rng *rand.Rand, randBytes func(int) []byte) request {
	plains := [][]byte{nil, randBytes(codec.MaxPlaintext + 1 + rng.IntN(256<<10))}
	p := plains[rng.IntN(len(plains))]
	if rng.IntN(2) == 0 {
		return request{kind: "v1-bad-encrypt", src: -1, call: func(ctx context.Context, c *load.Client) ([]byte, error) {
			v := load.V1APIVersion
			if len(p) > 0 && rng.IntN(2) == 0 {
				p, v = p[:32], "v1beta2"
			}
			r, err := c.V1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: v, Plain: p})
			return r.GetCipher(), err
		}}
	}
	return request{kind: "v2-bad-encrypt", src: -1, call: func(ctx context.Context, c *load.Client) ([]byte, error) {
		r, err := c.V2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: p})
		return r.GetCiphertext(), err
	}}
}
