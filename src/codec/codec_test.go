package codec

import (
	"bytes"
	"crypto/cipher"
	"crypto/fips140"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/cmdkms/kms/src/codec/codectest"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
)

func mustKey(t testing.TB, secret []byte) *Key {
	t.Helper()
	r, err := kek.Parse(secret)
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewKey(r.Keys[0])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestLegacyVectors(t *testing.T) {
	other := mustKey(t, randBytes(32))
	for i, v := range codectest.LegacyVectors {
		ct := v.Ciphertext()
		if got := codectest.LegacyEncrypt(v.Key(), v.IV(), []byte(v.Plain)); !bytes.Equal(got, ct) {
			t.Fatalf("vector %d: independent encoder disagrees with openssl", i)
		}
		k := mustKey(t, v.Key())
		// The legacy key need not be primary: after a rotation it is not.
		p, used, err := NewSet([]*Key{other, k}).Decrypt(ct)
		if err != nil || string(p) != v.Plain || used != k {
			t.Fatalf("vector %d: got %q, %v", i, p, err)
		}
	}
}

func TestLegacyRandom(t *testing.T) {
	for _, size := range []int{16, 24, 32} {
		secret := randBytes(size)
		// Legacy key first: with arbitrary lengths a wrong key earlier in
		// the ring may win a tie at one byte of padding (see decryptLegacy);
		// TestLegacyDEKBehindOtherKeys covers the realistic case.
		set := NewSet([]*Key{mustKey(t, secret), mustKey(t, randBytes(32))})
		for n := 0; n < 50; n++ {
			plain := randBytes(n)
			p, _, err := set.Decrypt(codectest.LegacyEncrypt(secret, randBytes(16), plain))
			if err != nil || !bytes.Equal(p, plain) {
				t.Fatalf("size %d len %d: %v", size, n, err)
			}
		}
	}
}

// kube-apiserver's DEKs are 32 bytes; behind many other keys they must
// still map to the right key every time.
func TestLegacyDEKBehindOtherKeys(t *testing.T) {
	var keys []*Key
	for range 20 {
		keys = append(keys, mustKey(t, randBytes(32)))
	}
	secret := randBytes(32)
	legacy := mustKey(t, secret)
	set := NewSet(append(keys, legacy))
	for range 500 {
		dek := randBytes(32)
		p, k, err := set.Decrypt(codectest.LegacyEncrypt(secret, randBytes(16), dek))
		if err != nil || k != legacy || !bytes.Equal(p, dek) {
			t.Fatalf("wrong key or error: %v", err)
		}
	}
}

// --mode legacy writes what the 2018 daemon reads: its format under the
// primary key alone (the 2018 daemon held one key), every plaintext size
// kube-apiserver may send included.
func TestLegacyEncrypt(t *testing.T) {
	primary, other := randBytes(32), randBytes(16)
	set := NewSet([]*Key{mustKey(t, primary), mustKey(t, other)})
	for _, n := range []int{0, 1, 15, 16, 32, 33} {
		plain := randBytes(n)
		ct, err := set.Encrypt(Legacy, plain)
		if err != nil {
			t.Fatal(err)
		}
		if want := len(codectest.LegacyPrefix) + 16 + (n/16+1)*16; len(ct) != want {
			t.Fatalf("%d bytes: ciphertext is %d bytes, want %d", n, len(ct), want)
		}
		if p, ok := codectest.LegacyDecrypt(primary, ct); !ok || !bytes.Equal(p, plain) {
			t.Fatalf("%d bytes: the 2018 decryption with the primary key: %x, %v", n, p, ok)
		}
		if n == 32 {
			if _, ok := codectest.LegacyDecrypt(other, ct); ok {
				t.Fatal("the secondary key opens a legacy ciphertext")
			}
		}
		p, k, err := set.Decrypt(ct)
		if err != nil || !bytes.Equal(p, plain) || k != set.Primary() {
			t.Fatalf("%d bytes: Decrypt: %x, %v, %v", n, p, k, err)
		}
	}
}

// Ciphertexts made elsewhere, with fixed nonces and IVs, decrypt: behind
// another key, in every mode (TestFIPS140Only runs this once more there).
func TestVectors(t *testing.T) {
	other := mustKey(t, randBytes(32))
	for i, v := range codectest.Vectors {
		k := mustKey(t, v.Key())
		if got := hex.EncodeToString(k.ID[:]); got != v.IDHex {
			t.Fatalf("vector %d: key id %s, Python's HMAC-SHA256 says %s", i, got, v.IDHex)
		}
		p, used, err := NewSet([]*Key{other, k}).Decrypt(v.Ciphertext())
		if err != nil || string(p) != v.Plain || used != k {
			t.Fatalf("vector %d: got %q, %v", i, p, err)
		}
	}
}

// kms once sealed aesgcm with cipher.NewGCM and a nonce of its own; now the
// module draws the nonce. Each reads the other's ciphertexts. The old way
// is refused in FIPS 140-only mode, so there it runs without enforcement.
func TestGCMOldAndNewInterchange(t *testing.T) {
	for _, size := range []int{16, 24, 32} {
		secret := randBytes(size)
		k := mustKey(t, secret)
		set := NewSet([]*Key{k})
		for n := 0; n <= 70; n += 7 {
			plain := randBytes(n)
			var old []byte
			fips140.WithoutEnforcement(func() { old = codectest.GCMSeal(secret, k.ID, randBytes(nonceLen), plain) })
			if p, _, err := set.Decrypt(old); err != nil || !bytes.Equal(p, plain) {
				t.Fatalf("size %d len %d: old ciphertext: %v", size, n, err)
			}
			ct, err := set.Encrypt(AESGCM, plain)
			if err != nil {
				t.Fatal(err)
			}
			var p []byte
			fips140.WithoutEnforcement(func() { p, err = codectest.GCMOpen(secret, ct) })
			if err != nil || !bytes.Equal(p, plain) {
				t.Fatalf("size %d len %d: the old decoder: %v", size, n, err)
			}
		}
	}
}

// GODEBUG=fips140=only refuses every algorithm outside FIPS 140-3 (GCM
// with a caller's nonce among them), by error or panic: the whole suite
// runs once more that way.
func TestFIPS140Only(t *testing.T) {
	if fips140.Enforced() {
		t.Skip("this is the FIPS 140-only run")
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=only")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("under GODEBUG=fips140=only: %v\n%s", err, out)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, mode := range []Mode{AESGCM, AESCBC} {
		for _, size := range []int{16, 24, 32} {
			set := NewSet([]*Key{mustKey(t, randBytes(size))})
			for n := 0; n <= 70; n++ {
				plain := randBytes(n)
				ct, err := set.Encrypt(mode, plain)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.HasPrefix(ct, []byte(":ck:v2:"+mode.String()+":")) {
					t.Fatalf("%v: header %q", mode, ct[:tagLen])
				}
				p, k, err := set.Decrypt(ct)
				if err != nil || !bytes.Equal(p, plain) || k != set.Primary() {
					t.Fatalf("%v size %d len %d: %v", mode, size, n, err)
				}
			}
		}
	}
}

func TestRandomized(t *testing.T) {
	set := NewSet([]*Key{mustKey(t, randBytes(32))})
	for _, mode := range []Mode{AESGCM, AESCBC} {
		a, _ := set.Encrypt(mode, []byte("same"))
		b, _ := set.Encrypt(mode, []byte("same"))
		if bytes.Equal(a, b) {
			t.Fatalf("%v: equal plaintexts gave equal ciphertexts", mode)
		}
	}
}

func TestSeedCiphertextFitsKMSv2Limit(t *testing.T) {
	set := NewSet([]*Key{mustKey(t, randBytes(32))})
	for _, mode := range []Mode{AESGCM, AESCBC} {
		ct, _ := set.Encrypt(mode, randBytes(32))
		if len(ct) > 1024 {
			t.Fatalf("%v: %d bytes", mode, len(ct))
		}
	}
}

func TestHeaderPicksKeyAndCodec(t *testing.T) {
	a, b := mustKey(t, randBytes(32)), mustKey(t, randBytes(16))
	old := NewSet([]*Key{a})
	ctGCM, _ := old.Encrypt(AESGCM, []byte("gcm"))
	ctCBC, _ := old.Encrypt(AESCBC, []byte("cbc"))
	rotated := NewSet([]*Key{b, a})
	for _, ct := range [][]byte{ctGCM, ctCBC} {
		p, k, err := rotated.Decrypt(ct)
		if err != nil || k != a || (string(p) != "gcm" && string(p) != "cbc") {
			t.Fatalf("got %q %v", p, err)
		}
	}
	newCT, _ := rotated.Encrypt(AESGCM, []byte("x"))
	if !bytes.Equal(newCT[tagLen:headerLen], b.ID[:]) {
		t.Fatal("new ciphertext does not name the new primary")
	}
	_, _, err := old.Decrypt(newCT)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), b.KeyID) {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestKeyID(t *testing.T) {
	k := mustKey(t, randBytes(32))
	set := NewSet([]*Key{k})
	for _, mode := range []Mode{AESGCM, AESCBC} {
		ct, _ := set.Encrypt(mode, []byte("dek"))
		if id, ok := KeyID(ct); !ok || id != k.ID {
			t.Errorf("%v: KeyID = %v, %v; want %v", mode, id, ok, k.ID)
		}
		if _, ok := KeyID(ct[:headerLen-1]); ok {
			t.Errorf("%v: a truncated header names a key", mode)
		}
	}
	v := codectest.LegacyVectors[0]
	for _, ct := range [][]byte{v.Ciphertext(), []byte("k8s:enc:aescbc:v1:key1:"), nil} {
		if id, ok := KeyID(ct); ok {
			t.Errorf("%.20q names key %v", ct, id)
		}
	}
}

func TestTamperingIsOneGenericError(t *testing.T) {
	set := NewSet([]*Key{mustKey(t, randBytes(32))})
	for _, mode := range []Mode{AESGCM, AESCBC} {
		ct, _ := set.Encrypt(mode, randBytes(32))
		for i := headerLen; i < len(ct); i++ {
			bad := bytes.Clone(ct)
			bad[i] ^= 0x01
			_, _, err := set.Decrypt(bad)
			if mode == AESGCM && err != ErrDecrypt {
				t.Fatalf("gcm byte %d: %v", i, err)
			}
			// Unauthenticated CBC may decrypt a flipped IV or first block
			// to garbage; what it must never do is say why it failed.
			if mode == AESCBC && err != nil && err != ErrDecrypt {
				t.Fatalf("cbc byte %d: %v", i, err)
			}
		}
	}
	// Every wrong last byte of the padding gives the same error value.
	k := set.Primary()
	for b := 0; b < 256; b++ {
		plain := append(bytes.Repeat([]byte{0xaa}, 15), byte(b))
		iv := randBytes(16)
		body := make([]byte, 16)
		cipher.NewCBCEncrypter(k.block, iv).CryptBlocks(body, plain) // no padding added
		_, _, err := set.Decrypt(append(append([]byte(":ck:aescbc:v1:"), iv...), body...))
		if b == 1 {
			if err != nil {
				t.Fatalf("pad 1: %v", err)
			}
		} else if err != ErrDecrypt {
			t.Fatalf("last byte %d: %v", b, err)
		}
	}
}

func TestMalformed(t *testing.T) {
	set := NewSet([]*Key{mustKey(t, randBytes(32))})
	gcm, _ := set.Encrypt(AESGCM, []byte("p"))
	cbc, _ := set.Encrypt(AESCBC, []byte("p"))
	for _, ct := range [][]byte{gcm, cbc, codectest.LegacyEncrypt(make([]byte, 16), make([]byte, 16), nil)} {
		for n := 0; n < len(ct); n++ {
			if _, _, err := set.Decrypt(ct[:n]); err == nil {
				t.Fatalf("truncated to %d decrypted", n)
			}
		}
	}
	for _, ct := range [][]byte{nil, []byte("garbage"), []byte(":ck:v3:aesgcm:"), make([]byte, MaxCiphertext+1)} {
		if _, _, err := set.Decrypt(ct); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%.20q: %v", ct, err)
		}
	}
	if _, err := set.Encrypt(AESGCM, make([]byte, MaxPlaintext+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized plaintext: %v", err)
	}
	big, err := set.Encrypt(AESCBC, make([]byte, MaxPlaintext))
	if err != nil || len(big) > MaxCiphertext {
		t.Fatalf("max plaintext: %d bytes, %v", len(big), err)
	}
}

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{AESGCM, AESCBC, Legacy} {
		if got, err := ParseMode(m.String()); err != nil || got != m {
			t.Fatal(m, err)
		}
	}
	if _, err := ParseMode("aes"); err == nil {
		t.Fatal("accepted aes")
	}
}

// The request path must stay cheap: one allocation for the output.
func TestEncryptAllocations(t *testing.T) {
	if testbin.RaceEnabled {
		// The race detector makes sync.Pool drop a quarter of what is put
		// back, and FIPS 140 mode draws each GCM nonce from a DRBG kept in
		// a pool: the count then says nothing about the code.
		t.Skip("allocation counts are not the code's under -race")
	}
	set := NewSet([]*Key{mustKey(t, randBytes(32))})
	seed := randBytes(32)
	if n := testing.AllocsPerRun(100, func() { set.Encrypt(AESGCM, seed) }); n > 1 {
		t.Fatalf("aesgcm Encrypt: %v allocations", n)
	}
	ct, _ := set.Encrypt(AESGCM, seed)
	if n := testing.AllocsPerRun(100, func() { set.Decrypt(ct) }); n > 1 {
		t.Fatalf("aesgcm Decrypt: %v allocations", n)
	}
}

func BenchmarkEncryptGCM(b *testing.B) {
	set := NewSet([]*Key{mustKey(b, randBytes(32))})
	seed := randBytes(32)
	for b.Loop() {
		set.Encrypt(AESGCM, seed)
	}
}

func FuzzDecrypt(f *testing.F) {
	secret := codectest.LegacyVectors[0].Key()
	set := NewSet([]*Key{mustKey(f, codectest.LegacyVectors[1].Key()), mustKey(f, secret)})
	for _, v := range codectest.LegacyVectors {
		f.Add(v.Ciphertext())
	}
	for _, m := range []Mode{AESGCM, AESCBC, Legacy} {
		ct, _ := set.Encrypt(m, []byte("0123456789abcdef0123456789abcdef"))
		f.Add(ct)
		f.Add(ct[:len(ct)-1])
	}
	f.Add([]byte(":ck:v2:aesgcm:"))
	f.Fuzz(func(t *testing.T, ct []byte) {
		p, k, err := set.Decrypt(ct)
		if err != nil {
			if p != nil || k != nil {
				t.Fatal("result with an error")
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownKey) && err != ErrDecrypt {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if k == nil || len(p) > len(ct) {
			t.Fatal("bad success")
		}
	})
}

// Wipe leaves none of the key in the cipher's memory: neither the key
// itself (the first round key of the AES schedule) nor its schedule.
func TestWipe(t *testing.T) {
	secret := bytes.Repeat([]byte{0xA5, 0x3C, 0x96, 0x0F}, 8)
	k, err := NewKey(kek.Key{Secret: bytes.Clone(secret)})
	if err != nil {
		t.Fatal(err)
	}
	block, gcm := k.block, k.gcm
	mem := func(v any) []byte {
		rv := reflect.ValueOf(v)
		if rv.Kind() == reflect.Struct { // the GCM with random nonces wraps its state
			rv = rv.Field(0)
		}
		return unsafe.Slice((*byte)(rv.UnsafePointer()), rv.Type().Elem().Size())
	}
	for name, v := range map[string]any{"AES block": block, "GCM": gcm} {
		if !bytes.Contains(mem(v), secret[:16]) && !bytes.Contains(mem(v), swapWords(secret[:16])) {
			t.Fatalf("%s: the key is not where the test looks for it; the test needs updating", name)
		}
	}
	if !k.Wipe() {
		t.Fatal("Wipe could not wipe Go's AES and GCM state on this platform")
	}
	for name, v := range map[string]any{"AES block": block, "GCM": gcm} {
		if m := mem(v); bytes.Count(m, []byte{0}) != len(m) {
			t.Errorf("%s: %d non-zero bytes left after Wipe", name, len(m)-bytes.Count(m, []byte{0}))
		}
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a wiped key encrypted")
		}
	}()
	NewSet([]*Key{k}).Encrypt(AESGCM, []byte("dek"))
}

// swapWords byte-swaps each 32-bit word: the generic AES key schedule
// keeps the key as big-endian words in native (little-endian) order.
func swapWords(b []byte) []byte {
	out := make([]byte, len(b))
	for i := 0; i+4 <= len(b); i += 4 {
		out[i], out[i+1], out[i+2], out[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	return out
}
