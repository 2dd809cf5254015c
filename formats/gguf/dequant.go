package gguf

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/tpconvert/tpconvert/tensor"
)

// Block layouts are those of ggml's ggml-common.h (block_q4_0, block_q4_1,
// block_q5_0, block_q5_1, block_q8_0, block_q2_K, block_q3_K, block_q4_K,
// block_q5_K, block_q6_K, block_q8_K, block_iq4_nl; QK_K = 256), and the
// arithmetic is that of the reference dequantize_row_* functions of
// ggml-quants.c, operation for operation in float32. Explicit float32
// conversions keep the compiler from fusing a multiply and an add, so the
// results match the reference bit for bit on every architecture.
//
// "d" and "dmin"/"m" fields are IEEE binary16 unless noted.

func init() {
	for _, q := range []struct {
		t tensor.DType
		f func(dst []float32, src []byte)
	}{
		{tensor.Q4_0, dequantQ4_0},
		{tensor.Q4_1, dequantQ4_1},
		{tensor.Q5_0, dequantQ5_0},
		{tensor.Q5_1, dequantQ5_1},
		{tensor.Q8_0, dequantQ8_0},
		{tensor.Q2_K, dequantQ2K},
		{tensor.Q3_K, dequantQ3K},
		{tensor.Q4_K, dequantQ4K},
		{tensor.Q5_K, dequantQ5K},
		{tensor.Q6_K, dequantQ6K},
		{tensor.Q8_K, dequantQ8K},
		{tensor.IQ4_NL, dequantIQ4NL},
	} {
		tensor.RegisterDequantizer(q.t, blockwise(q.t, q.f))
	}
}

// blockwise wraps a decoder that trusts its lengths with the length checks.
func blockwise(t tensor.DType, f func(dst []float32, src []byte)) tensor.Dequantizer {
	be, bb := int(t.BlockElems()), int(t.BlockBytes())
	return func(dst []float32, src []byte) error {
		if len(dst)%be != 0 || len(src) != len(dst)/be*bb {
			return fmt.Errorf("gguf: %w: %d bytes of %s for %d elements (blocks of %d elements in %d bytes)", tensor.ErrShape, len(src), t, len(dst), be, bb)
		}
		f(dst, src)
		return nil
	}
}

func half(lo, hi byte) float32 { return tensor.HalfToFloat(uint16(lo) | uint16(hi)<<8) }

// Q4_0: d, qs[16]; element j is (qs[j]&15 - 8)*d, element j+16 is
// (qs[j]>>4 - 8)*d.
func dequantQ4_0(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		b := (*[18]byte)(src[i*18:])
		y := (*[32]float32)(dst[i*32:])
		d := half(b[0], b[1])
		for j := 0; j < 16; j++ {
			q := b[2+j]
			y[j] = float32(int(q&0xf)-8) * d
			y[j+16] = float32(int(q>>4)-8) * d
		}
	}
}

// Q4_1: d, m, qs[16]; element = q*d + m.
func dequantQ4_1(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		b := (*[20]byte)(src[i*20:])
		y := (*[32]float32)(dst[i*32:])
		d, m := half(b[0], b[1]), half(b[2], b[3])
		for j := 0; j < 16; j++ {
			q := b[4+j]
			y[j] = float32(float32(q&0xf)*d) + m
			y[j+16] = float32(float32(q>>4)*d) + m
		}
	}
}

// Q5_0: d, qh (uint32, bit j is the fifth bit of element j), qs[16];
// element = (q - 16)*d.
func dequantQ5_0(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		b := (*[22]byte)(src[i*22:])
		y := (*[32]float32)(dst[i*32:])
		d := half(b[0], b[1])
		qh := binary.LittleEndian.Uint32(b[2:6])
		for j := 0; j < 16; j++ {
			h0 := byte(qh>>j<<4) & 0x10
			h1 := byte(qh>>(j+12)) & 0x10
			q := b[6+j]
			y[j] = float32(int((q&0xf)|h0)-16) * d
			y[j+16] = float32(int((q>>4)|h1)-16) * d
		}
	}
}

// Q5_1: d, m, qh, qs[16]; element = q*d + m.
func dequantQ5_1(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		b := (*[24]byte)(src[i*24:])
		y := (*[32]float32)(dst[i*32:])
		d, m := half(b[0], b[1]), half(b[2], b[3])
		qh := binary.LittleEndian.Uint32(b[4:8])
		for j := 0; j < 16; j++ {
			h0 := byte(qh>>j<<4) & 0x10
			h1 := byte(qh>>(j+12)) & 0x10
			q := b[8+j]
			y[j] = float32(float32((q&0xf)|h0)*d) + m
			y[j+16] = float32(float32((q>>4)|h1)*d) + m
		}
	}
}

// Q8_0: d, qs[32] (int8); element = q*d.
func dequantQ8_0(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		b := (*[34]byte)(src[i*34:])
		y := (*[32]float32)(dst[i*32:])
		d := half(b[0], b[1])
		for j := 0; j < 32; j++ {
			y[j] = float32(int8(b[2+j])) * d
		}
	}
}

// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits per
// element), d, dmin. Each half of 128 elements takes 32 bytes of qs, read
// four times at shifts 0, 2, 4, 6; each 16 elements have their own scale.
func dequantQ2K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/256; i++ {
		b := (*[84]byte)(src[i*84:])
		y := (*[256]float32)(dst[i*256:])
		d, dmin := half(b[80], b[81]), half(b[82], b[83])
		for g := 0; g < 16; g++ { // 16 groups of 16 elements
			n, shift, h := g/8, uint(g%8/2*2), g%2
			q := (*[16]byte)(b[16+32*n+16*h:])
			yy := (*[16]float32)(y[16*g:])
			sc := b[g]
			dl, ml := d*float32(sc&0xf), dmin*float32(sc>>4)
			for l := range yy {
				yy[l] = float32(dl*float32((q[l]>>shift)&3)) - ml
			}
		}
	}
}

// q3Scales unpacks Q3_K's sixteen 6-bit scales: the low four bits of scale i
// are nibble i/8 of byte i%8, the high two bits are bits 2*(i/4) of byte
// 8+i%4; the stored value is offset by 32.
func q3Scales(s *[12]byte) (sc [16]float32) {
	for i := 0; i < 16; i++ {
		lo := s[i%8] >> (4 * (i / 8)) & 0xf
		hi := s[8+i%4] >> (2 * (i / 4)) & 3
		sc[i] = float32(int(lo|hi<<4) - 32)
	}
	return sc
}

// Q3_K: hmask[32] (the third bit; bit set means no offset), qs[64] (low two
// bits), scales[12], d; element = d*scale*(q - 4*(1-hbit)).
func dequantQ3K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/256; i++ {
		b := (*[110]byte)(src[i*110:])
		y := (*[256]float32)(dst[i*256:])
		d := half(b[108], b[109])
		sc := q3Scales((*[12]byte)(b[96:108]))
		for g := 0; g < 16; g++ { // 16 groups of 16 elements
			n, shift, h := g/8, uint(g%8/2*2), g%2
			bit := uint(g / 2) // hmask bit of this group
			q := (*[16]byte)(b[32+32*n+16*h:])
			hm := (*[16]byte)(b[16*h:])
			yy := (*[16]float32)(y[16*g:])
			dl := d * sc[g]
			for l := range yy {
				// subtract 4 unless the hmask bit is set
				v := int(q[l]>>shift&3) - int(^hm[l]>>bit&1)<<2
				yy[l] = dl * float32(v)
			}
		}
	}
}

// scaleMinK4 unpacks the j-th 6-bit scale and min of Q4_K and Q5_K
// (get_scale_min_k4 in ggml-quants.c).
func scaleMinK4(j int, q *[12]byte) (sc, m float32) {
	if j < 4 {
		return float32(q[j] & 63), float32(q[j+4] & 63)
	}
	return float32(q[j+4]&0xf | (q[j-4]>>6)<<4), float32(q[j+4]>>4 | (q[j]>>6)<<4)
}

// Q4_K: d, dmin, scales[12], qs[128]. Each 64 elements take 32 bytes of qs,
// low nibbles first, with scales 2j and 2j+1; element = d*sc*q - dmin*m.
func dequantQ4K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/256; i++ {
		b := (*[144]byte)(src[i*144:])
		y := (*[256]float32)(dst[i*256:])
		d, dmin := half(b[0], b[1]), half(b[2], b[3])
		s := (*[12]byte)(b[4:16])
		for j := 0; j < 4; j++ {
			sc1, m1 := scaleMinK4(2*j, s)
			sc2, m2 := scaleMinK4(2*j+1, s)
			d1, dm1 := d*sc1, dmin*m1
			d2, dm2 := d*sc2, dmin*m2
			q := (*[32]byte)(b[16+32*j:])
			yy := (*[64]float32)(y[64*j:])
			for l := 0; l < 32; l++ {
				yy[l] = float32(d1*float32(q[l]&0xf)) - dm1
				yy[l+32] = float32(d2*float32(q[l]>>4)) - dm2
			}
		}
	}
}

// Q5_K: d, dmin, scales[12], qh[32], qs[128]; as Q4_K with a fifth bit
// from qh (bits 2j and 2j+1 for the j-th 64 elements).
func dequantQ5K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/256; i++ {
		b := (*[176]byte)(src[i*176:])
		y := (*[256]float32)(dst[i*256:])
		d, dmin := half(b[0], b[1]), half(b[2], b[3])
		s := (*[12]byte)(b[4:16])
		qh := (*[32]byte)(b[16:48])
		for j := 0; j < 4; j++ {
			sc1, m1 := scaleMinK4(2*j, s)
			sc2, m2 := scaleMinK4(2*j+1, s)
			d1, dm1 := d*sc1, dmin*m1
			d2, dm2 := d*sc2, dmin*m2
			q := (*[32]byte)(b[48+32*j:])
			yy := (*[64]float32)(y[64*j:])
			s1, s2 := uint(2*j), uint(2*j+1)
			for l := 0; l < 32; l++ {
				lo := q[l]&0xf | (qh[l]>>s1&1)<<4
				hi := q[l]>>4 | (qh[l]>>s2&1)<<4
				yy[l] = float32(d1*float32(lo)) - dm1
				yy[l+32] = float32(d2*float32(hi)) - dm2
			}
		}
	}
}

// Q6_K: ql[128] (low four bits), qh[64] (high two bits), scales[16]
// (int8), d; element = d*scale*(q - 32).
func dequantQ6K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/256; i++ {
		b := (*[210]byte)(src[i*210:])
		y := (*[256]float32)(dst[i*256:])
		d := half(b[208], b[209])
		for n := 0; n < 2; n++ {
			for g := 0; g < 2; g++ { // elements l = 16g..16g+15 of each quarter
				ql := (*[48]byte)(b[64*n+16*g:])
				qh := (*[16]byte)(b[128+32*n+16*g:])
				sc := (*[8]byte)(b[192+8*n:])
				s1 := d * float32(int8(sc[g]))
				s2 := d * float32(int8(sc[g+2]))
				s3 := d * float32(int8(sc[g+4]))
				s4 := d * float32(int8(sc[g+6]))
				yy := (*[112]float32)(y[128*n+16*g:])
				for l := 0; l < 16; l++ {
					h := qh[l]
					q1 := int(ql[l]&0xf|(h&3)<<4) - 32
					q2 := int(ql[l+32]&0xf|(h>>2&3)<<4) - 32
					q3 := int(ql[l]>>4|(h>>4&3)<<4) - 32
					q4 := int(ql[l+32]>>4|(h>>6&3)<<4) - 32
					yy[l] = s1 * float32(q1)
					yy[l+32] = s2 * float32(q2)
					yy[l+64] = s3 * float32(q3)
					yy[l+96] = s4 * float32(q4)
				}
			}
		}
	}
}

// Q8_K: d (float32), qs[256] (int8), bsums[16] (int16, unused here);
// element = d*q.
func dequantQ8K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/256; i++ {
		b := (*[292]byte)(src[i*292:])
		y := (*[256]float32)(dst[i*256:])
		d := math.Float32frombits(binary.LittleEndian.Uint32(b[0:4]))
		for j := 0; j < 256; j++ {
			y[j] = d * float32(int8(b[4+j]))
		}
	}
}

// kvaluesIQ4NL is the non-linear 4-bit grid of IQ4_NL (kvalues_iq4nl in
// ggml-common.h).
var kvaluesIQ4NL = [16]float32{-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}

// IQ4_NL: d, qs[16]; as Q4_0 with the grid value in place of q - 8.
func dequantIQ4NL(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		b := (*[18]byte)(src[i*18:])
		y := (*[32]float32)(dst[i*32:])
		d := half(b[0], b[1])
		for j := 0; j < 16; j++ {
			q := b[2+j]
			y[j] = d * kvaluesIQ4NL[q&0xf]
			y[j+16] = d * kvaluesIQ4NL[q>>4]
		}
	}
}
