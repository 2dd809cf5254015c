package checkout

import "testing"

func TestValidRelPath(t *testing.T) {
	for p, want := range map[string]bool{
		"config.json": true, "original/params.json": true, "a/b/c": true, ".gitattributes": true,
		"": false, "/etc/passwd": false, "../x": false, "a/../b": false, "a//b": false, "./a": false,
		"a/": false, `a\b`: false, "a\x00": false, "..": false,
	} {
		if got := ValidRelPath(p); got != want {
			t.Errorf("ValidRelPath(%q) = %v", p, got)
		}
	}
}
