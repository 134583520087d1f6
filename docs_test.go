package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// The documentation is README.md (the door) and docs/*.md (a page per
// reader task). These tests hold it to the tree: the map of the code, the
// configuration table, the links, and the Dockerfile shown in docs.

// readmeMaxLines keeps README.md a page a newcomer reads to the end.
const readmeMaxLines = 400

func TestREADMEIsAtMost400Lines(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(readme), "\n"); n > readmeMaxLines {
		t.Errorf("README.md has %d lines, want at most %d: move the details to a page in docs/", n, readmeMaxLines)
	}
}

// markdownTableRows returns the rows of the Markdown tables in section whose
// first cell starts with a backquote, split into trimmed cells.
func markdownTableRows(section string) [][]string {
	var rows [][]string
	for line := range strings.Lines(section) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells)
	}
	return rows
}

// codeSpans returns the text inside each `code span` of s.
func codeSpans(s string) []string {
	var spans []string
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(s, -1) {
		spans = append(spans, m[1])
	}
	return spans
}

// TestCodeMapMatchesTheTree holds README's "Map of the code" to the tree:
// every path in its first column exists, every non-test .go file at the
// module root has a row, and every other directory holding Go files has a
// row (or each of its files has one). A renamed or new file fails here
// until its row is written.
func TestCodeMapMatchesTheTree(t *testing.T) {
	rows := markdownTableRows(docsSection(t, "README.md", "## Map of the code"))
	if len(rows) == 0 {
		t.Fatal("README.md's Map of the code has no table")
	}
	mapped := map[string]bool{}
	for _, row := range rows {
		paths := codeSpans(row[0])
		if len(paths) == 0 || len(row) < 2 || row[1] == "" {
			t.Errorf("Map of the code: row %q needs a path in backquotes and what it owns", strings.Join(row, " | "))
		}
		for _, p := range paths {
			p = path.Clean(p)
			if _, err := os.Stat(p); err != nil {
				t.Errorf("Map of the code lists %s, which does not exist: %v", p, err)
			}
			mapped[p] = true
		}
	}

	err := filepath.WalkDir(".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := e.Name()
		if e.IsDir() {
			if p != "." && (strings.HasPrefix(name, ".") || name == "node_modules" || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") {
			return nil
		}
		dir := filepath.ToSlash(filepath.Dir(p))
		switch {
		case dir == "." && strings.HasSuffix(name, "_test.go"):
			// Root tests sit beside the file they pin.
		case dir == ".":
			if !mapped[name] {
				t.Errorf("%s has no row in README.md's Map of the code", name)
			}
		case !mapped[dir] && !mapped[filepath.ToSlash(p)]:
			t.Errorf("%s (package directory %s/) has no row in README.md's Map of the code", filepath.ToSlash(p), dir)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// configVariables returns the environment variables config.go reads: the
// upper-case string literals passed first to the envReader's methods
// (r.str("PORT", …), r.getenv("JWT_SECRET"), …).
func configVariables(t *testing.T) []string {
	t.Helper()
	file, err := parser.ParseFile(token.NewFileSet(), "config.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	isName := regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`).MatchString
	var names []string
	ast.Inspect(file, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if recv, ok := sel.X.(*ast.Ident); !ok || recv.Name != "r" {
			return true
		}
		if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
			if name, err := strconv.Unquote(lit.Value); err == nil && isName(name) && !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
		return true
	})
	return names
}

// TestREADMEConfigurationTableHasEveryVariable keeps README's one
// configuration table equal to the variables config.go reads.
func TestREADMEConfigurationTableHasEveryVariable(t *testing.T) {
	read := configVariables(t)
	if len(read) < 50 {
		t.Fatalf("found only %d variables in config.go (%v): has the way it reads them changed?", len(read), read)
	}
	var documented []string
	for _, row := range markdownTableRows(docsSection(t, "README.md", "## Configuration")) {
		documented = append(documented, codeSpans(row[0])...)
	}
	for _, name := range read {
		if !slices.Contains(documented, name) {
			t.Errorf("config.go reads %s, which README.md's configuration table lacks", name)
		}
	}
	for _, name := range documented {
		if !slices.Contains(read, name) {
			t.Errorf("README.md's configuration table has %s, which config.go does not read", name)
		}
	}
}

// markdownProse returns page without its fenced code blocks and code
// spans, where neither links nor headings live.
func markdownProse(page string) string {
	var b strings.Builder
	fenced := false
	for line := range strings.Lines(page) {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			b.WriteString(line)
		}
	}
	return regexp.MustCompile("`[^`\n]*`").ReplaceAllStringFunc(b.String(), func(span string) string {
		// Keep a heading's words (GitHub keeps them in its anchor), drop
		// anything link-like elsewhere.
		return strings.ReplaceAll(strings.Trim(span, "`"), "](", " ")
	})
}

// markdownAnchors returns the anchors GitHub gives page's headings: lower
// case, letters, digits, '-' and '_' kept, spaces turned into '-', the
// rest dropped; a repeated anchor gets -1, -2, ….
func markdownAnchors(page string) map[string]bool {
	anchors := map[string]bool{}
	for line := range strings.Lines(markdownProse(page)) {
		heading := strings.TrimLeft(line, "#")
		if heading == line || !strings.HasPrefix(heading, " ") {
			continue
		}
		var slug strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				slug.WriteRune(r)
			case r == ' ':
				slug.WriteRune('-')
			}
		}
		anchor := slug.String()
		for i := 1; anchors[anchor]; i++ {
			anchor = slug.String() + "-" + strconv.Itoa(i)
		}
		anchors[anchor] = true
	}
	return anchors
}

// TestDocsLinksResolve checks every relative link of README.md and
// docs/*.md: the file exists and, for a link into a Markdown page, the
// page has a heading with that anchor.
func TestDocsLinksResolve(t *testing.T) {
	pages, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	pages = append([]string{"README.md"}, pages...)
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, page := range pages {
		text, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(markdownProse(string(text)), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			if file == "" {
				file = page
			} else {
				file = filepath.Join(filepath.Dir(page), file)
			}
			if _, err := os.Stat(file); err != nil {
				t.Errorf("%s links to %s, which does not exist", page, target)
				continue
			}
			if anchor == "" || !strings.HasSuffix(file, ".md") {
				continue
			}
			linked, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if !markdownAnchors(string(linked))[anchor] {
				t.Errorf("%s links to %s, but %s has no heading with the anchor #%s", page, target, file, anchor)
			}
		}
	}
}

// TestDocsDockerfileBlockIsTheDockerfile keeps the Dockerfile shown in
// docs/deployment.md equal to the repository's, comments aside.
func TestDocsDockerfileBlockIsTheDockerfile(t *testing.T) {
	page, err := os.ReadFile("docs/deployment.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(page), "```dockerfile\n")
	block, _, ok2 := strings.Cut(after, "```")
	if !ok || !ok2 {
		t.Fatal("docs/deployment.md has no dockerfile block")
	}
	dockerfile, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	instructions := func(s string) []string {
		var lines []string
		for line := range strings.Lines(s) {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				lines = append(lines, line)
			}
		}
		return lines
	}
	if have, want := instructions(block), instructions(string(dockerfile)); !slices.Equal(have, want) {
		t.Errorf("docs/deployment.md's Dockerfile:\n%s\nis not the repository's Dockerfile:\n%s", strings.Join(have, "\n"), strings.Join(want, "\n"))
	}
}
