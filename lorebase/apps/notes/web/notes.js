// The notes example's screen in lorebase's web client: loaded because GET /apps lists it,
// it adds its tab through `lorebase.screen` and draws with the core's helpers. A note's text
// is only ever set as text (never as HTML), so a note cannot inject markup.
(function notes() {
  'use strict';
  const {api, h, form, show, go, flash, fileLink} = lorebase;

  lorebase.words({conflict: 'This note was being changed elsewhere at the same time. Please try again.'},
    {text: 'A note must have between 1 and 10,000 characters.'});

  function size(n) {
    const units = ['bytes', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  // The attachment picker: the user's files as a list of checkboxes (name and size), those of
  // `chosen` ticked; `.ids()` gives the ticked ones, in the list's order.
  function picker(files, chosen) {
    const ticked = new Set(chosen);
    const list = h('ul', {class: 'picker'}, files.map((f) => h('li', {},
      h('label', {class: 'check'}, h('input', {type: 'checkbox', value: f.id, checked: ticked.has(f.id)}),
        h('span', {class: 'name'}, f.name), h('span', {class: 'size'}, size(f.size))))));
    const box = h('fieldset', {class: 'attach'}, h('legend', {}, 'Attached files'), list);
    box.ids = () => [...list.querySelectorAll('input:checked')].map((input) => input.value);
    return box;
  }

  async function notesScreen() {
    const [notes, files] = await Promise.all([api('GET', '/notes'), api('GET', '/files')]);
    const byId = Object.fromEntries(files.map((f) => [f.id, f]));
    const attach = picker(files, []);
    const composer = form('new-note', 'New note', [], 'Save note', async () => {
      const text = composer.querySelector('textarea').value;
      await api('POST', '/notes', {text, files: attach.ids()});
      go('notes');
    });
    composer.insertBefore(h('label', {}, 'Text', h('textarea', {name: 'text', rows: 4, required: true})),
      composer.querySelector('button'));
    if (files.length) composer.insertBefore(attach, composer.querySelector('button'));
    const list = h('ul', {class: 'notes', id: 'notes'}, notes.map((note) => noteItem(note, byId, files)));
    show(composer, h('h2', {}, 'Your notes'), notes.length ? list : h('p', {class: 'muted'}, 'No notes yet.'));
  }

  function noteItem(note, byId, files) {
    const item = h('li', {class: 'note', 'data-id': note.id},
      h('p', {class: 'text'}, note.text),
      h('p', {class: 'meta'}, new Date(note.ts).toLocaleString(), ' ',
        note.files.filter((id) => byId[id]).map((id) => fileLink(byId[id]))),
      h('button', {type: 'button', class: 'edit', onclick: () => edit()}, 'Edit'),
      h('button', {type: 'button', class: 'delete', onclick: async () => {
        if (!confirm('Delete this note?')) return;
        try { await api('POST', '/notes/delete', {id: note.id}); go('notes'); } catch (e) { flash(e.message, 'error'); }
      }}, 'Delete'));
    // the text and the attachments, changed together (POST /notes/update takes both)
    function edit() {
      const area = h('textarea', {rows: 4, 'aria-label': 'Text'}, note.text);
      const attach = picker(files, note.files);
      const save = h('button', {type: 'button', class: 'save', onclick: async () => {
        try {
          await api('POST', '/notes/update', {id: note.id, text: area.value, files: attach.ids()});
          go('notes');
        } catch (e) {
          flash(e.message, 'error');
        }
      }}, 'Save');
      item.replaceChildren(area, files.length ? attach : '', save,
        h('button', {type: 'button', class: 'cancel', onclick: () => go('notes')}, 'Cancel'));
    }
    return item;
  }

  lorebase.screen({name: 'notes', title: 'Notes', render: notesScreen});
})();
