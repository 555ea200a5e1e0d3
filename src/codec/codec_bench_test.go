package codec

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"testing"
)

// The baselines do the least work any codec must do for the same output:
// a fresh random nonce or IV, one output allocation, and the AES mode
// itself, with the cipher set up once as the codec does. The gap between a
// codec and its baseline is what the header, key lookup and checks cost.

var benchSizes = []int{32, 1 << 10, 64 << 10}

func sizeName(n int) string {
	if n < 1<<10 {
		return fmt.Sprintf("%dB", n)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

type benchCase struct {
	name    string
	encrypt func([]byte) []byte
	decrypt func([]byte) []byte
}

func benchCases(b *testing.B) []benchCase {
	secret := randBytes(32)
	set := NewSet([]*Key{mustKey(b, secret)})
	block, err := aes.NewCipher(secret)
	if err != nil {
		b.Fatal(err)
	}
	gcm, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		b.Fatal(err)
	}
	codecCase := func(m Mode) benchCase {
		return benchCase{
			name: m.String(),
			encrypt: func(p []byte) []byte {
				ct, err := set.Encrypt(m, p)
				if err != nil {
					b.Fatal(err)
				}
				return ct
			},
			decrypt: func(ct []byte) []byte {
				p, _, err := set.Decrypt(ct)
				if err != nil {
					b.Fatal(err)
				}
				return p
			},
		}
	}
	return []benchCase{
		codecCase(AESGCM),
		{
			name: "baseline-gcm",
			encrypt: func(p []byte) []byte {
				return gcm.Seal(make([]byte, 0, nonceLen+len(p)+gcmOverhead), nil, p, nil)
			},
			decrypt: func(ct []byte) []byte {
				p, err := gcm.Open(make([]byte, 0, len(ct)-nonceLen-gcmOverhead), nil, ct, nil)
				if err != nil {
					b.Fatal(err)
				}
				return p
			},
		},
		codecCase(AESCBC),
		{
			name: "baseline-cbc",
			encrypt: func(p []byte) []byte {
				pad := aes.BlockSize - len(p)%aes.BlockSize
				out := make([]byte, aes.BlockSize+len(p)+pad)
				rand.Read(out[:aes.BlockSize])
				body := out[aes.BlockSize:]
				copy(body, p)
				for i := len(p); i < len(body); i++ {
					body[i] = byte(pad)
				}
				cipher.NewCBCEncrypter(block, out[:aes.BlockSize]).CryptBlocks(body, body)
				return out
			},
			decrypt: func(ct []byte) []byte {
				out := make([]byte, len(ct)-aes.BlockSize)
				cipher.NewCBCDecrypter(block, ct[:aes.BlockSize]).CryptBlocks(out, ct[aes.BlockSize:])
				pad := int(out[len(out)-1])
				if subtle.ConstantTimeLessOrEq(pad, aes.BlockSize) != 1 {
					b.Fatal("bad padding")
				}
				return out[:len(out)-pad]
			},
		},
	}
}

// go test -run '^$' -bench 'Encrypt|Decrypt' ./src/codec: each size lists
// aesgcm beside baseline-gcm and aescbc beside baseline-cbc.
func BenchmarkEncrypt(b *testing.B) {
	cases := benchCases(b)
	for _, n := range benchSizes {
		p := randBytes(n)
		for _, c := range cases {
			b.Run(sizeName(n)+"/"+c.name, func(b *testing.B) {
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					c.encrypt(p)
				}
			})
		}
	}
}

func BenchmarkDecrypt(b *testing.B) {
	cases := benchCases(b)
	for _, n := range benchSizes {
		p := randBytes(n)
		for _, c := range cases {
			ct := c.encrypt(p)
			if got := c.decrypt(ct); string(got) != string(p) {
				b.Fatalf("%s does not round-trip", c.name)
			}
			b.Run(sizeName(n)+"/"+c.name, func(b *testing.B) {
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					c.decrypt(ct)
				}
			})
		}
	}
}
