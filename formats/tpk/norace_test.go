//go:build !race

package tpk

const raceBuild = false
