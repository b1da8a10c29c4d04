// The notes example's screen in lorebase's web client: loaded because GET /apps lists it,
// it adds its tab through `lorebase.screen` and draws with the core's helpers. A note's text
// is only ever set as text (never as HTML), so a note cannot inject markup.
(function notes() {
  'use strict';
  const {api, h, form, show, go, flash, fileLink} = lorebase;

  lorebase.words({conflict: 'This note was being changed elsewhere at the same time. Please try again.'},
    {text: 'A note must have between 1 and 10,000 characters.'});

  async function notesScreen() {
    const [notes, files] = await Promise.all([api('GET', '/notes'), api('GET', '/files')]);
    const byId = Object.fromEntries(files.map((f) => [f.id, f]));
    const attach = h('select', {name: 'files', multiple: true, 'aria-label': 'Attach files'},
      files.map((f) => h('option', {value: f.id}, f.name)));
    const composer = form('new-note', 'New note', [], 'Save note', async () => {
      const text = composer.querySelector('textarea').value;
      const chosen = [...attach.selectedOptions].map((o) => o.value);
      await api('POST', '/notes', {text, files: chosen});
      go('notes');
    });
    composer.insertBefore(h('label', {}, 'Text', h('textarea', {name: 'text', rows: 4, required: true})),
      composer.querySelector('button'));
    if (files.length) composer.insertBefore(h('label', {}, 'Attach files', attach), composer.querySelector('button'));
    const list = h('ul', {class: 'notes', id: 'notes'}, notes.map((note) => noteItem(note, byId)));
    show(composer, h('h2', {}, 'Your notes'), notes.length ? list : h('p', {class: 'muted'}, 'No notes yet.'));
  }

  function noteItem(note, byId) {
    const item = h('li', {class: 'note', 'data-id': note.id},
      h('p', {class: 'text'}, note.text),
      h('p', {class: 'meta'}, new Date(note.ts).toLocaleString(), ' ',
        note.files.filter((id) => byId[id]).map((id) => fileLink(byId[id]))),
      h('button', {type: 'button', class: 'edit', onclick: () => edit()}, 'Edit'),
      h('button', {type: 'button', class: 'delete', onclick: async () => {
        if (!confirm('Delete this note?')) return;
        try { await api('POST', '/notes/delete', {id: note.id}); go('notes'); } catch (e) { flash(e.message, 'error'); }
      }}, 'Delete'));
    function edit() {
      const area = h('textarea', {rows: 4}, note.text);
      const save = h('button', {type: 'button', class: 'save', onclick: async () => {
        try { await api('POST', '/notes/update', {id: note.id, text: area.value}); go('notes'); } catch (e) {
          flash(e.message, 'error');
        }
      }}, 'Save');
      item.replaceChildren(area, save, h('button', {type: 'button', onclick: () => go('notes')}, 'Cancel'));
    }
    return item;
  }

  lorebase.screen({name: 'notes', title: 'Notes', render: notesScreen});
})();
