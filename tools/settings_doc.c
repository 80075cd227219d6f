/* settings_doc: the settings reference, from the option table (src/config_options.c),
 * for the docs: `settings_doc markdown` prints docs/configuration.md's table,
 * `settings_doc man` the OPTIONS entries of docs/sendry-sync.1. `make docs` splices them
 * in between their markers; `make check` fails when the files differ from it. */
#include <stdio.h>
#include <string.h>

#include "config_priv.h"

/* Text with "--" as roff's "\-\-", folded at 78 columns (mandoc's lint wants lines of
 * at most 80 bytes); the table's line breaks become spaces. */
static void man_text(const char *s)
{
    char word[256];
    int col = 0;
    while (*s) {
        size_t n = 0;
        while (*s == ' ' || *s == '\n')
            s++;
        while (*s && *s != ' ' && *s != '\n' && n + 3 < sizeof word) {
            if (*s == '-' && s[1] == '-') {
                memcpy(word + n, "\\-\\-", 4);
                n += 4;
                s += 2;
            } else {
                word[n++] = *s++;
            }
        }
        if (!n)
            break;
        word[n] = '\0';
        if (col && col + 1 + (int)n > 78) {
            putchar('\n');
            col = 0;
        }
        col += printf("%s%s", col ? " " : "", word);
    }
    if (col)
        putchar('\n');
}

static void man(void)
{
    const struct option_def *o;
    for (size_t i = 0; (o = config_option(i)); i++) {
        if (!o->name)
            continue;
        char name[64], facts[160];
        size_t n = 0;
        for (const char *p = o->name; *p && n + 3 < sizeof name; p++) {
            if (*p == '-')
                name[n++] = '\\';
            name[n++] = *p;
        }
        name[n] = '\0';
        if (o->arg)
            printf(".TP\n.BI \\-\\-%s \" %s\"\n", name, o->arg);
        else
            printf(".TP\n.B \\-\\-%s\n", name);
        config_option_facts(o, facts, sizeof facts);
        char line[640];
        snprintf(line, sizeof line, "%s%s%s%s.", o->help, facts[0] ? " (" : "", facts, facts[0] ? ")" : "");
        man_text(line);
    }
}

/* A Markdown cell: the table's line breaks as spaces, '|' escaped. */
static void cell(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            putchar(' ');
        else if (*s == '|')
            fputs("\\|", stdout);
        else
            putchar(*s);
    }
}

static void markdown(void)
{
    printf("| flag | variable | default | bounds | what it does |\n|---|---|---|---|---|\n");
    const struct option_def *o;
    for (size_t i = 0; (o = config_option(i)); i++) {
        printf("| ");
        if (o->name) {
            printf("`--%s%s", o->name, o->arg ? " " : "");
            if (o->arg)
                cell(o->arg);
            printf("`");
        } else {
            printf("(none)");
        }
        printf(" | %s%s%s | ", o->env ? "`" : "", o->env ? o->env : "", o->env ? "`" : "");
        if (o->def)
            printf("`%s`", o->def);
        printf(" | ");
        if (config_option_is_number(o))
            printf("%g–%g", o->min, o->max);
        printf(" | ");
        cell(o->help);
        printf(" |\n");
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "man") == 0)
        man();
    else if (argc == 2 && strcmp(argv[1], "markdown") == 0)
        markdown();
    else {
        fprintf(stderr, "usage: settings_doc markdown|man\n");
        return 2;
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
